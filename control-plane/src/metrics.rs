//! Prometheus metrics of the control plane.

use crate::infra::host::EnvoyState;
use gatewright_translator::ObjectKey;
use gatewright_xds::Cache;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The managed Envoys, shared between the run loop and the admin server.
pub type Envoys = Arc<Mutex<BTreeMap<ObjectKey, Arc<EnvoyState>>>>;

/// Every metric, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Translations run.
    pub translations: Counter,
    /// How long each translation took (load, translate and publish).
    pub translation_seconds: Histogram,
    /// Problems found in the input at the last load.
    pub config_problems: Gauge,
    /// Gateways programmed at the last translation.
    pub gateways: Gauge,
    /// Objects the API server holds that could not be decoded, by kind
    /// (Kubernetes mode).
    pub undecodable_objects: Family<KindLabel, Gauge>,
}

/// The `kind` label of per-kind metrics.
pub type KindLabel = [(&'static str, &'static str); 1];

impl Metrics {
    /// Registers every metric; xDS figures are read from `cache` and Envoy
    /// figures from `envoys` at scrape time.
    pub fn new(cache: Cache, envoys: Envoys) -> Self {
        let mut registry = Registry::with_prefix("gatewright");
        let translations = Counter::default();
        registry.register(
            "translations",
            "Translations of the input into Envoy configuration",
            translations.clone(),
        );
        // 100 µs .. ~3 s.
        let translation_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        registry.register(
            "translation_duration_seconds",
            "Time to load, translate and publish the configuration",
            translation_seconds.clone(),
        );
        let config_problems = Gauge::default();
        registry.register(
            "config_problems",
            "Problems found in the input at the last load",
            config_problems.clone(),
        );
        let gateways = Gauge::default();
        registry.register(
            "gateways",
            "Gateways programmed at the last translation",
            gateways.clone(),
        );
        let undecodable_objects = Family::<KindLabel, Gauge>::default();
        registry.register(
            "undecodable_objects",
            "Objects of a watched kind that could not be decoded and are ignored",
            undecodable_objects.clone(),
        );
        registry.register_collector(Box::new(XdsCollector { cache, envoys }));
        Self {
            registry,
            translations,
            translation_seconds,
            config_problems,
            gateways,
            undecodable_objects,
        }
    }

    /// Records one applied translation: its duration and how many Gateways
    /// it programmed.
    pub fn record_translation(&self, elapsed: std::time::Duration, gateways: usize) {
        self.translations.inc();
        self.translation_seconds.observe(elapsed.as_secs_f64());
        self.gateways
            .set(i64::try_from(gateways).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Debug)]
struct XdsCollector {
    cache: Cache,
    envoys: Envoys,
}

impl Collector for XdsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.cache.stats();
        let counters = [
            (
                "xds_pushes",
                "xDS responses sent to Envoys",
                stats.responses.load(Ordering::Relaxed),
            ),
            (
                "xds_nacks",
                "xDS responses Envoys rejected",
                stats.nacks.load(Ordering::Relaxed),
            ),
            (
                "xds_streams_cut_off",
                "xDS streams refused or closed for exceeding a limit (streams, names, unacknowledged responses)",
                stats.cut_off.load(Ordering::Relaxed),
            ),
            (
                "xds_secrets_refused",
                "xDS streams denied secrets because the client is not authenticated",
                stats.secrets_refused.load(Ordering::Relaxed),
            ),
            (
                "xds_denied",
                "xDS streams refused by the authorizer",
                stats.denied.load(Ordering::Relaxed),
            ),
        ];
        let (restarts, live) = {
            let envoys = self
                .envoys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let restarts: u64 = envoys
                .values()
                .map(|e| e.restarts.load(Ordering::Relaxed))
                .sum();
            let live = envoys
                .values()
                .filter(|e| e.live.load(Ordering::Relaxed))
                .count();
            (restarts, live)
        };
        for (name, help, value) in counters.into_iter().chain([(
            "envoy_restarts",
            "Envoy child processes restarted after exiting",
            restarts,
        )]) {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "xds_connected_envoys",
                "Open xDS streams",
                i64::try_from(stats.streams.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "xds_node_groups",
                "Node groups in the xDS cache (published, or watched by a stream)",
                i64::try_from(self.cache.group_count()).unwrap_or(i64::MAX),
            ),
            (
                "envoys_live",
                "Managed Envoys whose admin reports LIVE",
                i64::try_from(live).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}
