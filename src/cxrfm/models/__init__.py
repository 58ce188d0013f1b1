"""cxrfm.models"""
