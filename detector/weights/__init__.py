"""Reading weights files (safetensors, or torch files without unpickling code) into our models."""

from detector.weights.loading import load_weights, read_state_dict, save_weights

__all__ = ["load_weights", "read_state_dict", "save_weights"]
