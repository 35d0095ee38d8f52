"""The detection service: ``python -m api`` serves a ``detector.predictor.Predictor`` over HTTP,
batching concurrent requests into one forward pass. ``create_app`` builds the app."""
