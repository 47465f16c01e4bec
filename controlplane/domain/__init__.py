"""Pure logic: no I/O, no frameworks. Everything here is testable with plain values."""
