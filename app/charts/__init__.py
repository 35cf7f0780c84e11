"""Plotly figures for the explorer, one module per page: each builder takes plain data
and returns a Figure.

No Streamlit and no model code here, so every chart can be tested without a browser.
``common`` holds the shared look (fonts, colours, layout); a view imports its own page's
module (the Overview page shows the Compare page's loss curve and the Completions page's
candidate bars).
"""
