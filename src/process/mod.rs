//! Processors: per-input stages between an input and the routes.

pub(crate) mod ecs_metadata;
