//! Helpers for the system tests live in tests/.
