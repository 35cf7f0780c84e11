"""The Streamlit explorer (never imported by the minituner package)."""
