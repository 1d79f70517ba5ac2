"""Gradio UI. Talks to studio services only (never storage/ or engines/ directly)."""
