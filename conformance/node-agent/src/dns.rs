//! Cluster DNS: answers `*.svc.cluster.local` from the Services the agent
//! watches, over UDP and TCP. It never forwards: names outside the cluster
//! zone get REFUSED at once (gwr-conf has no route out anyway).
//!
//! Only the wire format comes from hickory-proto; the zone and the serving
//! loops are ours (small and without hickory-server's moving API).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local.";
/// TTL of every answer: Services change under the tests' feet.
pub const TTL: u32 = 5;

/// A record of the cluster zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An alias (ExternalName), absolute, with a trailing dot.
    Cname(String),
    /// A named port: port and target host (absolute).
    Srv(u16, String),
}

/// The answers of the cluster zone, by lower-case absolute name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    records: HashMap<String, Vec<Rec>>,
}

impl Zone {
    /// Adds a record to `name` (absolute or not; made lower case).
    pub fn add(&mut self, name: &str, rec: Rec) {
        let mut key = name.to_ascii_lowercase();
        if !key.ends_with('.') {
            key.push('.');
        }
        let recs = self.records.entry(key).or_default();
        if !recs.contains(&rec) {
            recs.push(rec);
        }
    }

    /// Records at `name` (lower-case absolute).
    pub fn get(&self, name: &str) -> Option<&[Rec]> {
        self.records.get(name).map(Vec::as_slice)
    }
}

/// What the server answers besides the cluster zone.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Zones (absolute, lower case) where any name answers with the asking
    /// client's address, as CoreDNS's `whoami` does for the UDPRoute test.
    pub whoami: Vec<String>,
}

fn under(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

fn record(name: &Name, rec: &Rec) -> Option<Record> {
    let rdata = match rec {
        Rec::A(ip) => RData::A(A(*ip)),
        Rec::Cname(target) => RData::CNAME(CNAME(Name::from_ascii(target).ok()?)),
        Rec::Srv(port, target) => {
            RData::SRV(SRV::new(0, 100, *port, Name::from_ascii(target).ok()?))
        }
    };
    Some(Record::from_rdata(name.clone(), TTL, rdata))
}

fn wants(qtype: RecordType, rec: &Rec) -> bool {
    matches!(
        (qtype, rec),
        (RecordType::A | RecordType::ANY, Rec::A(_))
            | (RecordType::SRV | RecordType::ANY, Rec::Srv(..))
            | (_, Rec::Cname(_))
    )
}

/// Builds the response to `req` (never fails: bad queries get FORMERR or
/// NOTIMP). `client` is the asking address, for `whoami` zones.
pub fn answer(req: &Message, zone: &Zone, opts: &Options, client: IpAddr) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.add_queries(req.queries.iter().cloned());
    if req.metadata.message_type != MessageType::Query {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp;
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    let qname = q.name();
    let name = qname.to_lowercase().to_ascii();
    let name = if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    };
    if q.query_class() != DNSClass::IN {
        resp.metadata.response_code = ResponseCode::Refused;
        return resp;
    }
    if let Some(_zone) = opts.whoami.iter().find(|z| under(&name, z)) {
        resp.metadata.authoritative = true;
        if let (IpAddr::V4(ip), RecordType::A | RecordType::ANY) = (client, q.query_type())
            && let Some(r) = record(qname, &Rec::A(ip))
        {
            resp.add_answer(r);
        }
        return resp;
    }
    if !under(&name, DOMAIN) {
        // No upstream, on purpose: fail fast instead of timing out.
        resp.metadata.response_code = ResponseCode::Refused;
        return resp;
    }
    resp.metadata.authoritative = true;
    match zone.get(&name) {
        None => resp.metadata.response_code = ResponseCode::NXDomain,
        Some(recs) => {
            for rec in recs.iter().filter(|r| wants(q.query_type(), r)) {
                if let Some(r) = record(qname, rec) {
                    resp.add_answer(r);
                }
            }
        }
    }
    resp
}

/// Parses a query, answers it and encodes the response; `None` when the
/// bytes are not a DNS message worth answering. For UDP the response is
/// truncated (TC) to what the client accepts.
pub fn handle(
    bytes: &[u8],
    zone: &Zone,
    opts: &Options,
    client: IpAddr,
    udp: bool,
) -> Option<Vec<u8>> {
    let req = Message::from_vec(bytes).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let resp = answer(&req, zone, opts, client);
    let out = resp.to_vec().ok()?;
    let limit = req
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload()).max(512));
    if udp && out.len() > limit {
        return resp.truncate().to_vec().ok();
    }
    Some(out)
}

/// The zone the server reads; swapped whole by the watcher.
pub type SharedZone = Arc<RwLock<Zone>>;

fn snapshot(zone: &SharedZone) -> Zone {
    match zone.read() {
        Ok(z) => z.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Serves DNS on `addr` over UDP and TCP until an error stops a listener.
pub async fn serve(addr: SocketAddr, zone: SharedZone, opts: Options) -> Result<()> {
    let udp = UdpSocket::bind(addr)
        .await
        .with_context(|| format!("binding DNS on udp {addr}"))?;
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding DNS on tcp {addr}"))?;
    tracing::info!(%addr, "serving DNS (udp and tcp)");
    let opts = Arc::new(opts);
    let udp_task = {
        let zone = zone.clone();
        let opts = opts.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = udp.recv_from(&mut buf).await.context("DNS udp recv")?;
                let z = snapshot(&zone);
                if let Some(out) = handle(&buf[..n], &z, &opts, peer.ip(), true)
                    && let Err(e) = udp.send_to(&out, peer).await
                {
                    tracing::debug!(%peer, "DNS udp send: {e}");
                }
            }
        }
    };
    let tcp_task = async move {
        loop {
            let (stream, peer) = tcp.accept().await.context("DNS tcp accept")?;
            let zone = zone.clone();
            let opts = opts.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_tcp(stream, peer.ip(), zone, opts).await {
                    tracing::debug!(%peer, "DNS tcp: {e:#}");
                }
            });
        }
    };
    tokio::select! {
        r = udp_task => r,
        r = tcp_task => r,
    }
}

/// One TCP connection: length-prefixed messages until EOF or 10 s idle.
async fn serve_tcp(
    mut stream: TcpStream,
    client: IpAddr,
    zone: SharedZone,
    opts: Arc<Options>,
) -> Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            // EOF or idle: the client is done.
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut msg))
            .await
            .context("reading a DNS message")??;
        let z = snapshot(&zone);
        let Some(out) = handle(&msg, &z, &opts, client, false) else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(out.len()) else {
            return Ok(());
        };
        stream.write_all(&n.to_be_bytes()).await?;
        stream.write_all(&out).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        m
    }

    fn zone() -> Zone {
        let mut z = Zone::default();
        z.add(
            "web.ns.svc.cluster.local",
            Rec::A(Ipv4Addr::new(10, 96, 0, 5)),
        );
        z.add(
            "_http._tcp.web.ns.svc.cluster.local",
            Rec::Srv(80, "web.ns.svc.cluster.local.".into()),
        );
        z.add(
            "ext.ns.svc.cluster.local",
            Rec::Cname("example.org.".into()),
        );
        z
    }

    fn ask(name: &str, t: RecordType) -> Message {
        // Through the wire format, as the server does.
        let bytes = query(name, t).to_vec().expect("encode");
        let out = handle(
            &bytes,
            &zone(),
            &Options {
                whoami: vec!["foo.bar.com.".into()],
            },
            IpAddr::V4(Ipv4Addr::new(10, 244, 0, 9)),
            true,
        )
        .expect("answered");
        Message::from_vec(&out).expect("decode")
    }

    fn rdatas(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn cluster_names() {
        let m = ask("Web.NS.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(rdatas(&m), ["10.96.0.5"]);
        assert_eq!(m.answers[0].ttl, TTL);

        let m = ask("_http._tcp.web.ns.svc.cluster.local.", RecordType::SRV);
        assert_eq!(rdatas(&m), ["0 100 80 web.ns.svc.cluster.local."]);

        let m = ask("ext.ns.svc.cluster.local.", RecordType::A);
        assert_eq!(rdatas(&m), ["example.org."]);

        // Exists, no AAAA: NODATA.
        let m = ask("web.ns.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());

        let m = ask("nope.ns.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // A search-path expansion of a short name that is not ours.
        let m = ask("web.ns.svc.cluster.local.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn outside_names_are_refused_and_whoami_answers() {
        let m = ask("example.org.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.answers.is_empty());
        let m = ask("foo.bar.com.", RecordType::A);
        assert_eq!(rdatas(&m), ["10.244.0.9"]);
    }

    #[test]
    fn garbage_is_ignored() {
        let z = zone();
        let o = Options::default();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(handle(&[], &z, &o, ip, true).is_none());
        assert!(handle(&[1, 2, 3], &z, &o, ip, true).is_none());
        assert!(handle(&[0xff; 600], &z, &o, ip, true).is_none());
    }
}
