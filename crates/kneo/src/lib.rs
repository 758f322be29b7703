//! kneo: tower middleware for HTTP API clients.
