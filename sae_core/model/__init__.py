"""Model access: load a language model, find its parts, name and hook its sites, replay its layers."""
