"""cxrfm.anatomy"""
