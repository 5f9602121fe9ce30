"""The per-request contract: context, stages, denials."""
