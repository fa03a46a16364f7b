//! The connector's integration tests, as one test binary: one PostgreSQL server
//! and one control plane serve every module, and the binary is linked once.

mod common;
mod tgfake;

mod bridge;
mod chats;
mod cluster;
mod crash;
mod dialogue;
mod edge;
mod gateway;
mod standalone;
mod telegram;
mod whatsapp;
mod whatsapp_web;
