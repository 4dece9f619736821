//! Tollgate's Raft type config: what a log entry carries (a [`LogRequest`]), what applying
//! it answers (a [`CommandResponse`]) and how members are known (a number and a gRPC
//! address). Storage (`store`) and transport (`raft`) both build on it, so it sits below
//! both and depends only on the state machine's types.

use std::io::Cursor;

use openraft::BasicNode;

use crate::state::{CommandResponse, Request as LogRequest};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Tollgate's Raft types: commands in, command responses out, nodes known by gRPC address.
    pub TypeConfig:
        D = LogRequest,
        R = CommandResponse,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
