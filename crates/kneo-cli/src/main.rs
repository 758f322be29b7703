//! The `kneo` command.

fn main() {}
