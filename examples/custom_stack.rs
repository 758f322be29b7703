//! custom_stack

fn main() {}
