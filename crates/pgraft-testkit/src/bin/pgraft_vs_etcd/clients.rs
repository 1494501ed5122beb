//! The two systems' clients: pgraft through SQL over libpq, etcd through its gRPC API.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::Client;

/// One libpq connection with the three statements prepared.
pub struct PgraftClient {
    conn: postgres::Client,
    put: postgres::Statement,
    get: postgres::Statement,
    replicate: postgres::Statement,
}

impl PgraftClient {
    /// Connects to `conninfo` and prepares the statements.
    pub fn connect(conninfo: &str) -> Result<Self> {
        let mut conn = postgres::Client::connect(&format!("{conninfo} connect_timeout=10"), postgres::NoTls)
            .with_context(|| format!("connect to {conninfo}"))?;
        let put = conn.prepare("SELECT pgraft_kv_put($1::text, $2::text)").context("prepare the put")?;
        let get = conn.prepare("SELECT pgraft_kv_get($1)").context("prepare the get")?;
        let replicate = conn.prepare("SELECT pgraft_replicate_entry($1)").context("prepare the replicate")?;
        Ok(Self { conn, put, get, replicate })
    }
}

impl Client for PgraftClient {
    fn put(&mut self, key: &str, value: &str) -> Result<()> {
        let ok: bool = self.conn.query_one(&self.put, &[&key, &value]).context("pgraft_kv_put")?.get(0);
        anyhow::ensure!(ok, "pgraft_kv_put answered false");
        Ok(())
    }
    fn get(&mut self, key: &str) -> Result<()> {
        let v: Option<String> = self.conn.query_one(&self.get, &[&key]).context("pgraft_kv_get")?.get(0);
        anyhow::ensure!(v.is_some(), "{key} is missing");
        Ok(())
    }
    fn replicate(&mut self, payload: &str) -> Result<()> {
        let ok: bool =
            self.conn.query_one(&self.replicate, &[&payload]).context("pgraft_replicate_entry")?.get(0);
        anyhow::ensure!(ok, "pgraft_replicate_entry answered false");
        Ok(())
    }
}

/// One gRPC connection with its own single-threaded runtime, used synchronously.
pub struct EtcdClient {
    rt: tokio::runtime::Runtime,
    client: etcd_client::Client,
    timeout: Option<Duration>,
}

impl EtcdClient {
    /// Connects to one endpoint (`http://127.0.0.1:P`). With `timeout`, every request
    /// fails after that long.
    pub fn connect(url: &str, timeout: Option<Duration>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("a runtime")?;
        let opts = timeout.map(|t| etcd_client::ConnectOptions::new().with_timeout(t));
        let client = rt
            .block_on(etcd_client::Client::connect([url], opts))
            .with_context(|| format!("connect to {url}"))?;
        Ok(Self { rt, client, timeout })
    }

    /// Runs `f` on this client's runtime, bounded by the client's timeout.
    pub fn block<T, F>(&mut self, f: impl FnOnce(etcd_client::Client) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let fut = f(self.client.clone());
        match self.timeout {
            Some(t) => self.rt.block_on(async {
                tokio::time::timeout(t, fut)
                    .await
                    .map_err(|_| anyhow::anyhow!("timed out after {t:?}"))?
                    .map_err(anyhow::Error::from)
            }),
            None => self.rt.block_on(fut).map_err(anyhow::Error::from),
        }
    }
}

impl Client for EtcdClient {
    fn put(&mut self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (key.to_string(), value.to_string());
        self.block(|mut c| async move { c.put(k, v, None).await }).context("etcd put")?;
        Ok(())
    }
    fn get(&mut self, key: &str) -> Result<()> {
        let k = key.to_string();
        let r = self.block(|mut c| async move { c.get(k, None).await }).context("etcd get")?;
        anyhow::ensure!(!r.kvs().is_empty(), "{key} is missing");
        Ok(())
    }
}

/// `n` pgraft clients spread over the members (client i on member i mod members).
pub fn pgraft_clients(conninfos: &[String], n: usize) -> Result<Vec<Box<dyn Client>>> {
    (0..n)
        .map(|i| {
            let c = PgraftClient::connect(&conninfos[i % conninfos.len()])
                .with_context(|| format!("client {i}"))?;
            Ok(Box::new(c) as Box<dyn Client>)
        })
        .collect()
}

/// `n` etcd clients spread over the members (client i on member i mod members).
pub fn etcd_clients(urls: &[String], n: usize) -> Result<Vec<Box<dyn Client>>> {
    (0..n)
        .map(|i| {
            let c =
                EtcdClient::connect(&urls[i % urls.len()], None).with_context(|| format!("client {i}"))?;
            Ok(Box::new(c) as Box<dyn Client>)
        })
        .collect()
}
