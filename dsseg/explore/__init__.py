"""``dsseg explore``: a local web app to re-segment one image from cached attention and to browse a
segment job's output. ``session`` (one image) and ``outputs`` (a job's rows) hold the logic and need
no web framework; ``app`` lays them out with Gradio (the optional ``explore`` extra)."""
