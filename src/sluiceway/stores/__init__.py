"""Things kept on disk: downloaded model artifacts (and, as they land, feedback and uploads)."""
