"""The HTTP service and web page of `itmatch serve`."""
