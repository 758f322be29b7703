//! axum_gateway

fn main() {}
