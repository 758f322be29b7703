//! quickstart

fn main() {}
