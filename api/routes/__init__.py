"""One router per resource: detections, health, the model (and its metrics)."""
