//! Everything a query is answered from, built whole from one config and swapped whole on
//! reload, so a query never sees half of an old config and half of a new one. Within a
//! config, the answers of steered names follow the edges' health: [`State::refresh`]
//! swaps in a new answer map, whole, when the regions' health changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::answer_map::{AnswerMap, Steered};
use crate::cells::Cells;
use crate::config::{ConfigError, GeoDnsConfig, HealthConfig};
use crate::fast_path::{FastName, wire_name};
use crate::geo::{CidrOverrides, Locator, MmdbLocator};
use crate::health::EdgeHealth;
use crate::static_answers::StaticAnswers;
use crate::steering::{Regions, network_hash};
use crate::zone::Zone;

/// The answering state of one config.
#[derive(Debug)]
pub struct State {
    pub zone: Zone,
    pub regions: Regions,
    /// Every client address's place and its nearest regions: the locator's whole answer,
    /// walked once (the database itself is not kept).
    cells: Cells,
    /// The answers of the regions' health of [`AnswerMap::health`].
    answers: ArcSwap<AnswerMap>,
    /// Held while a new answer map is built, so two refreshes cannot swap in out of order.
    refreshing: Mutex<()>,
    pub ecs: bool,
    pub health: HealthConfig,
    /// Customer, region and static names in lower-case wire form, for
    /// [`crate::fast_path`].
    pub fast_names: FxHashMap<Vec<u8>, FastName>,
    /// The zone's answers that are the same for every client, encoded for
    /// [`crate::fast_path`] from this config's zone.
    pub static_answers: StaticAnswers,
    /// `<region>.edge.<zone>` in wire form, by region index.
    pub region_wire_names: Vec<Vec<u8>>,
    pub zone_max_answers: usize,
    pub config: GeoDnsConfig,
}

impl State {
    /// Builds the state of a validated config. `health` carries the probe states of the
    /// edges that are still configured (empty at start).
    pub fn new(
        config: GeoDnsConfig,
        health: &HashMap<String, Arc<EdgeHealth>>,
    ) -> Result<Self, ConfigError> {
        let zone = Zone::new(&config).map_err(|e| ConfigError::Invalid {
            field: "zone".into(),
            message: e.to_string(),
        })?;
        let database = match &config.geo.database {
            Some(path) => Some(MmdbLocator::open(path).map_err(|e| ConfigError::Invalid {
                field: "geo.database".into(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let overrides = CidrOverrides::new(
            config
                .geo
                .overrides
                .iter()
                .map(|o| (o.cidr, o.region.to_ascii_lowercase())),
        )
        .map_err(|e| ConfigError::Invalid {
            field: "geo.overrides".into(),
            message: e.to_string(),
        })?;
        let regions = Regions::new(&config.regions, &config.geo.default_region, health);
        let started = std::time::Instant::now();
        let cells = Cells::new(&Locator::new(overrides, database), &regions);
        let located = started.elapsed();
        let answers = AnswerMap::new(&cells, &regions, regions.health());
        tracing::info!(
            places = cells.len(),
            runs = ?(cells.v4.len(), cells.v6.len()),
            answer_runs = ?answers.runs(),
            located_ms = located.as_millis(),
            answered_ms = (started.elapsed() - located).as_millis(),
            "every client network located and answered"
        );
        let zone_name = &config.zone.name;
        let region_wire_names: Vec<Vec<u8>> = config
            .regions
            .iter()
            .map(|r| wire_name(&format!("{}.edge.{zone_name}", r.name)))
            .collect();
        let static_answers = StaticAnswers::new(&zone, &regions);
        // Later entries win, as in `Zone::answer`: a region's name over a customer's, and
        // either over a static name (which `Zone::static_names` leaves out anyway).
        let mut fast_names: FxHashMap<Vec<u8>, FastName> = static_answers
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.wire.clone(), FastName::Static(i)))
            .collect();
        for (i, c) in config.customers.iter().enumerate() {
            fast_names.insert(
                wire_name(&format!("{}.{zone_name}", c.name)),
                FastName::Customer(i),
            );
        }
        for (i, name) in region_wire_names.iter().enumerate() {
            fast_names.insert(name.clone(), FastName::Region(i));
        }
        Ok(Self {
            fast_names,
            static_answers,
            region_wire_names,
            zone_max_answers: config.zone.max_answers,
            zone,
            regions,
            cells,
            answers: ArcSwap::from_pointee(answers),
            refreshing: Mutex::new(()),
            ecs: config.geo.ecs,
            health: config.health.clone(),
            config,
        })
    }

    /// Where client `client` (an ECS network's address or a resolver's) goes, and the ECS
    /// scope of that answer: one lookup in the answer map in service. The one decision
    /// the UDP fast path and the general path both answer from.
    pub fn steer(&self, client: IpAddr) -> Steered {
        let client = client.to_canonical();
        self.answers.load().steer(client, network_hash(client))
    }

    /// Whether the regions' health moved since the answer map in service was built.
    pub fn stale(&self) -> bool {
        *self.answers.load().health() != self.regions.health()
    }

    /// Puts in service an answer map decided from the regions' health now, if that
    /// changed since the one in service was built; whether it did. Blocks for as long as
    /// building takes (tens of milliseconds with a City database): call it off the async
    /// runtime. The server calls it after every batch of probe results.
    pub fn refresh(&self) -> bool {
        let _one_at_a_time = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let health = self.regions.health();
        if *self.answers.load().health() == health {
            return false;
        }
        let started = std::time::Instant::now();
        let map = AnswerMap::new(&self.cells, &self.regions, health);
        tracing::debug!(runs = ?map.runs(), ms = started.elapsed().as_millis(), "answers follow the regions' health");
        self.answers.store(Arc::new(map));
        true
    }
}
