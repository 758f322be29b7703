//! loopback bench

fn main() {}
