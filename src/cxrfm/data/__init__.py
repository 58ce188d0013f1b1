"""cxrfm.data"""
