"""The service's web page (index.html), served at / by llmrec.server."""
