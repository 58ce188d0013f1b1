"""Inference pipelines: ``Pipeline.from_pretrained(run_dir)`` then ``pipeline(inputs)``.

- :mod:`cxrfm.pipelines.lung_masks`: images -> lung masks (the segmenter), folders of mask PNGs.
- :mod:`cxrfm.pipelines.report_generation`: images -> reports (any generator with ``generate()``).
- :mod:`cxrfm.pipelines.classification`: images -> finding probabilities, decisions and heatmaps.

Each pipeline holds its model(s) and writes its loop out, with a progress bar. The face stays empty
so importing one pipeline loads only what it needs (and no matplotlib unless it draws).
"""
