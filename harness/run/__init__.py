"""Running jobs: specs expand into jobs; the serial, Ray and deadline runners execute
them (sealed in bubblewrap where available), under time limits, capturing output."""
