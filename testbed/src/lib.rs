//! The network testbed's Rust parts (Linux, root): `strata-netem`, a packet-level link emulator that bridges
//! two TUN interfaces in two network namespaces and holds every packet for the link's one-way delay (and
//! drops a share of them), and `strata-drive`, a device that runs measured requests through the SDK. The
//! orchestration (namespaces, `tc` rate limits, cgroup CPU quotas, the cluster's processes) is `testbed/run`.

pub mod sys;
