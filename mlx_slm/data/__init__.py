"""Text data: reading local texts, tokenizing them, cutting token windows, the corpora Debian ships."""
