"""cxrfm.training"""
