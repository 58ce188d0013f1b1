"""cxrfm.evaluation"""
