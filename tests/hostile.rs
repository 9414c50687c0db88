#[path = "hostile/service.rs"]
mod service;
mod support;
