"""Session recording: an incremental XDF writer and the session recorder thread."""
