//! Edge-node processes and a plain HTTP upstream for sandbox tests.
