"""Scoring: named, versioned protocols that turn raw scores and labels into metrics."""
