//! `imprint-central serve`: opens the central system's directory, binds the
//! listeners and runs them until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::{AcceptAll, CentralService, ServerLimits, serve};
use crate::registry::{Registry, RegistryError};
use crate::tls::{self, EndpointCertificate, EndpointConfig, EndpointNames, TlsError};
use crate::{CentralAuthority, CentralError};

/// What `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The central system's directory.
    pub dir: PathBuf,
    /// Address of the operating server.
    pub listen: String,
    /// Address of the TLS endpoint, if any.
    pub tls_listen: Option<String>,
    /// Names for the TLS endpoint's certificate (DNS names or IP addresses).
    pub tls_names: Vec<String>,
    /// Limits of both listeners.
    pub limits: ServerLimits,
}

/// Why `serve` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The central key or certificate could not be opened.
    #[error("opening the central system: {0}")]
    Central(#[from] CentralError),
    /// The registry could not be opened.
    #[error("opening the registry: {0}")]
    Registry(#[from] RegistryError),
    /// The TLS endpoint could not be set up.
    #[error("setting up the TLS endpoint: {0}")]
    Tls(#[from] TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn endpoint_names(names: &[String]) -> EndpointNames {
    let mut parsed = EndpointNames {
        dns: Vec::new(),
        ips: Vec::new(),
    };
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) => parsed.ips.push(ip),
            Err(_) => parsed.dns.push(name.clone()),
        }
    }
    parsed
}

async fn bind(address: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind {
            address: address.to_owned(),
            source,
        })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Runs the operating server (and the TLS endpoint) until SIGINT or SIGTERM.
/// `on_listening` hears each bound address ("operating server", "TLS endpoint").
pub fn run(
    options: ServeOptions,
    on_listening: impl Fn(&str, SocketAddr),
) -> Result<(), ServeError> {
    let central = CentralAuthority::open(&options.dir)?;
    let registry = Registry::open(&options.dir)?;
    let tls_config = match &options.tls_listen {
        Some(_) => {
            let endpoint = EndpointCertificate::load_or_create(
                &central,
                &options.dir,
                &endpoint_names(&options.tls_names),
            )?;
            Some(endpoint)
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let root = central.cert.clone();
    let service = Arc::new(CentralService::new(
        central,
        registry,
        Arc::new(AcceptAll),
        options.limits.clone(),
    ));
    runtime.block_on(async {
        let listener = bind(&options.listen).await?;
        if let Ok(address) = listener.local_addr() {
            on_listening("operating server", address);
        }
        let tls_task = match (&options.tls_listen, tls_config) {
            (Some(address), Some(endpoint)) => {
                let admitting = Arc::clone(&service);
                let admission: tls::Admission = Arc::new(move |unit, module| {
                    let serial = module.module_serial().unwrap_or_default().to_owned();
                    // Called inside the handshake on a runtime thread; the
                    // registry write syncs to disk.
                    admitting
                        .registry_blocking(|registry| {
                            registry.check_module(unit, &serial)?;
                            registry.module_seen(module, unit, super::now())
                        })
                        .map_err(|err| err.to_string())
                });
                let config = tls::server_config(&endpoint, &root, admission)?;
                let listener = bind(address).await?;
                if let Ok(address) = listener.local_addr() {
                    on_listening("TLS endpoint", address);
                }
                let limits = EndpointConfig {
                    max_connections: options.limits.max_connections,
                    handshake_timeout: options.limits.frame_timeout,
                    idle_timeout: options.limits.frame_timeout,
                    ..EndpointConfig::default()
                };
                Some(tokio::spawn(tls::run_tls_endpoint(
                    listener,
                    config,
                    limits,
                    shutdown_signal(),
                )))
            }
            _ => None,
        };
        serve(listener, service, shutdown_signal()).await;
        if let Some(task) = tls_task {
            let _ = task.await;
        }
        Ok(())
    })
}
