//! A synchronous wrapper around [`crate::Client`] with its own small runtime, for apps without async.

use std::collections::HashMap;

use strata_runtime::TensorData;

use crate::client::{self, ClientConfig, Inference};
use crate::error::SdkError;
use crate::route::Constraints;

/// A blocking client. Do not call it from inside an async runtime.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    inner: client::Client,
}

impl Client {
    /// Connects (lazily) to the cluster behind `config.endpoints`.
    pub fn new(config: ClientConfig) -> Result<Client, SdkError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-sdk")
            .enable_all()
            .build()
            .map_err(|e| SdkError::Local(format!("cannot start the SDK runtime: {e}")))?;
        let inner = runtime.block_on(async { client::Client::new(config) })?;
        Ok(Client { runtime, inner })
    }

    /// See [`client::Client::infer`].
    pub fn infer(
        &self,
        model: &str,
        inputs: HashMap<String, TensorData>,
        constraints: Constraints,
    ) -> Result<Inference, SdkError> {
        self.runtime
            .block_on(self.inner.infer(model, inputs, constraints))
    }

    /// See [`client::Client::prepare`].
    pub fn prepare(&self, model: &str) -> Result<(), SdkError> {
        self.runtime.block_on(self.inner.prepare(model))
    }

    /// See [`client::Client::counters`].
    pub fn counters(&self) -> crate::Counters {
        self.inner.counters()
    }

    /// The async client inside.
    pub fn as_async(&self) -> &client::Client {
        &self.inner
    }
}
