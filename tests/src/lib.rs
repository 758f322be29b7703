//! Support for kneo's end-to-end tests: scripted loopback servers.
