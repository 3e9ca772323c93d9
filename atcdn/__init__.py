"""atcdn: a media CDN for the AT Protocol."""
