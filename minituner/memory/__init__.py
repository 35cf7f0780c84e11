"""Memory and parameter math: model shapes, predicted bytes, measured bytes, and the
source chapter's figures."""
