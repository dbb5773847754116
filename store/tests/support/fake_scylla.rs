//! A fake ScyllaDB node for contract tests: scylla-proxy in dry mode (no
//! real node behind it) answering the CQL protocol from fleetd's schema file.
//!
//! It performs the handshake, fails the driver's `system.*` metadata
//! queries (the driver then falls back to the contact points, as with any
//! node whose metadata it cannot read), and answers:
//! * PREPARE with metadata derived from `schemas/cql/` — each bind marker's
//!   type is its column's type, so the driver type-checks fleetd's Rust
//!   values against the schema, and a statement naming an unknown table or
//!   column makes the test fail;
//! * EXECUTE with an empty result (writes) or canned rows (reads), and
//!   records the decoded bound values;
//! * other QUERYs (the migration's DDL, `USE`) with VOID / SET_KEYSPACE,
//!   recording their text.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use scylla_proxy::{
    Condition, Node, Proxy, Reaction, RequestFrame, RequestOpcode, RequestReaction, RequestRule,
    ResponseFrame, ResponseOpcode, RunningProxy,
};

/// A decoded CQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One EXECUTE the node received: which statement, and its bound values by
/// marker name.
#[derive(Debug, Clone)]
pub struct Executed {
    pub text: String,
    pub values: HashMap<String, Val>,
}

impl Executed {
    pub fn int(&self, name: &str) -> i64 {
        match self.values.get(name) {
            Some(Val::Int(v)) => *v,
            other => panic!("{name} is {other:?} in {}", self.text),
        }
    }
    pub fn text_of(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(Val::Text(v)) => v.clone(),
            other => panic!("{name} is {other:?} in {}", self.text),
        }
    }
}

/// A table of the schema file: column types and partition key.
#[derive(Debug, Clone)]
struct Table {
    columns: HashMap<String, String>,
    partition_key: Vec<String>,
    /// Partition key then clustering columns.
    primary_key: Vec<String>,
    /// `WITH CLUSTERING ORDER BY (col DESC)`: rows come newest first.
    clustering_desc: bool,
}

/// What PREPARE answered for one statement.
#[derive(Debug, Clone)]
struct Prepared {
    text: String,
    table: String,
    /// Bind markers in order: (name, CQL type).
    markers: Vec<(String, String)>,
    /// Result columns of a SELECT: (name, CQL type).
    result: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    prepared: Vec<Prepared>,
    executed: Vec<Executed>,
    queries: Vec<String>,
    /// Canned result rows per statement text prefix, values in result
    /// column order.
    rows: Vec<(String, Vec<Vec<Val>>)>,
    engine: Engine,
}

/// The running fake node.
pub struct FakeScylla {
    pub addr: SocketAddr,
    pub proxy: RunningProxy,
    state: Arc<Mutex<State>>,
    tables: Arc<HashMap<String, Table>>,
}

pub const KEYSPACE: &str = "fleetd_test";

impl FakeScylla {
    pub async fn start() -> FakeScylla {
        let addr = SocketAddr::new(scylla_proxy::get_exclusive_local_address(), 9042);
        let state = Arc::new(Mutex::new(State::default()));
        let tables = Arc::new(parse_schema());
        let rules = base_rules(&state, &tables);
        let proxy = Proxy::builder()
            .with_node(
                Node::builder()
                    .proxy_address(addr)
                    .request_rules(rules)
                    .build_dry_mode(),
            )
            .build()
            .run()
            .await
            .expect("proxy starts");
        FakeScylla {
            addr,
            proxy,
            state,
            tables,
        }
    }

    /// Puts `rules` in front of the normal behaviour (first match wins).
    pub fn prepend_rules(&mut self, mut rules: Vec<RequestRule>) {
        rules.extend(base_rules(&self.state, &self.tables));
        self.proxy.running_nodes[0].change_request_rules(Some(rules));
    }

    /// Back to the normal behaviour.
    pub fn reset_rules(&mut self) {
        let rules = base_rules(&self.state, &self.tables);
        self.proxy.running_nodes[0].change_request_rules(Some(rules));
    }

    pub fn prepared_texts(&self) -> Vec<String> {
        let state = self.state.lock().expect("lock");
        state.prepared.iter().map(|p| p.text.clone()).collect()
    }

    pub fn executed(&self) -> Vec<Executed> {
        self.state.lock().expect("lock").executed.clone()
    }

    pub fn clear_executed(&self) {
        self.state.lock().expect("lock").executed.clear();
    }

    pub fn queries(&self) -> Vec<String> {
        self.state.lock().expect("lock").queries.clone()
    }

    /// Answers EXECUTEs of statements starting with `prefix` with `rows`.
    pub fn set_rows(&self, prefix: &str, rows: Vec<Vec<Val>>) {
        let mut state = self.state.lock().expect("lock");
        state.rows.retain(|(p, _)| p != prefix);
        state.rows.push((prefix.to_owned(), rows));
    }
}

fn base_rules(state: &Arc<Mutex<State>>, tables: &Arc<HashMap<String, Table>>) -> Vec<RequestRule> {
    let prepare_state = Arc::clone(state);
    let prepare_tables = Arc::clone(tables);
    let execute_state = Arc::clone(state);
    let engine_tables = Arc::clone(tables);
    let query_state = Arc::clone(state);
    vec![
        RequestRule(
            Condition::RequestOpcode(RequestOpcode::Options),
            RequestReaction::forge_response(Arc::new(|frame: RequestFrame| {
                ResponseFrame::forged_supported(frame.params, &HashMap::default())
                    .expect("supported frame")
            })),
        ),
        RequestRule(
            Condition::or(
                Condition::RequestOpcode(RequestOpcode::Startup),
                Condition::RequestOpcode(RequestOpcode::Register),
            ),
            RequestReaction::forge_response(Arc::new(|frame: RequestFrame| {
                ResponseFrame::forged_ready(frame.params)
            })),
        ),
        // The driver's topology and schema reads (queries and prepares of
        // `system*` tables): fail them, so it keeps the
        // contact point as the only node (its documented fallback).
        RequestRule(
            Condition::and(
                Condition::or(
                    Condition::RequestOpcode(RequestOpcode::Query),
                    Condition::RequestOpcode(RequestOpcode::Prepare),
                ),
                Condition::BodyContainsCaseInsensitive(Box::new(*b" FROM system")),
            ),
            RequestReaction::forge().server_error(),
        ),
        RequestRule(
            Condition::RequestOpcode(RequestOpcode::Query),
            RequestReaction::forge_response(Arc::new(move |frame: RequestFrame| {
                let mut body = frame.body.clone();
                let text = read_long_string(&mut body);
                query_state.lock().expect("lock").queries.push(text.clone());
                let mut out = BytesMut::new();
                if let Some(ks) = text.strip_prefix("USE ") {
                    out.put_i32(3);
                    put_string(&mut out, ks.trim_matches('"'));
                } else {
                    out.put_i32(1);
                }
                result(&frame, out)
            })),
        ),
        RequestRule(
            Condition::RequestOpcode(RequestOpcode::Prepare),
            RequestReaction::forge_response(Arc::new(move |frame: RequestFrame| {
                let mut body = frame.body.clone();
                let text = read_long_string(&mut body);
                let prepared = describe(&text, &prepare_tables);
                let mut state = prepare_state.lock().expect("lock");
                let index = match state.prepared.iter().position(|p| p.text == text) {
                    Some(i) => i,
                    None => {
                        state.prepared.push(prepared.clone());
                        state.prepared.len() - 1
                    }
                };
                let table = &prepare_tables[&prepared.table];
                let mut out = BytesMut::new();
                out.put_i32(4);
                put_short_bytes(&mut out, &statement_id(index));
                // Bind marker metadata, with the partition key indexes the
                // driver's token-aware routing uses.
                let pk: Vec<i16> = table
                    .partition_key
                    .iter()
                    .map(|col| prepared.markers.iter().position(|(m, _)| m == col))
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| i as i16)
                    .collect();
                out.put_i32(0x0001);
                out.put_i32(prepared.markers.len() as i32);
                out.put_i32(pk.len() as i32);
                for i in pk {
                    out.put_i16(i);
                }
                put_string(&mut out, KEYSPACE);
                put_string(&mut out, &prepared.table);
                for (name, typ) in &prepared.markers {
                    put_string(&mut out, name);
                    out.put_i16(type_id(typ));
                }
                put_result_metadata(&mut out, &prepared);
                result(&frame, out)
            })),
        ),
        RequestRule(
            Condition::RequestOpcode(RequestOpcode::Execute),
            RequestReaction::forge_response(Arc::new(move |frame: RequestFrame| {
                let mut body = frame.body.clone();
                let id = read_short_bytes(&mut body);
                let mut state = execute_state.lock().expect("lock");
                let index = (0..state.prepared.len())
                    .find(|&i| statement_id(i) == id)
                    .expect("EXECUTE of a prepared statement");
                let prepared = state.prepared[index].clone();
                let _consistency = body.get_i16();
                let flags = body.get_u8();
                let mut values = HashMap::new();
                if flags & 0x01 != 0 {
                    let n = body.get_i16() as usize;
                    assert_eq!(n, prepared.markers.len(), "{}", prepared.text);
                    for (name, typ) in &prepared.markers {
                        values.insert(name.clone(), read_value(&mut body, typ));
                    }
                }
                let table = &engine_tables[&prepared.table];
                let stored = state.engine.execute(&prepared, table, &values);
                state.executed.push(Executed {
                    text: prepared.text.clone(),
                    values,
                });
                let mut out = BytesMut::new();
                if prepared.result.is_empty() {
                    out.put_i32(1);
                } else {
                    let rows = state
                        .rows
                        .iter()
                        .find(|(prefix, _)| prepared.text.starts_with(prefix.as_str()))
                        .map(|(_, rows)| rows.clone())
                        .unwrap_or(stored);
                    out.put_i32(2);
                    put_result_metadata(&mut out, &prepared);
                    out.put_i32(rows.len() as i32);
                    for row in rows {
                        for (val, (_, typ)) in row.iter().zip(&prepared.result) {
                            put_value(&mut out, val, typ);
                        }
                    }
                }
                result(&frame, out)
            })),
        ),
    ]
}

fn result(frame: &RequestFrame, body: BytesMut) -> ResponseFrame {
    ResponseFrame::new(
        frame.params.for_response(),
        ResponseOpcode::Result,
        body.freeze(),
    )
}

fn statement_id(index: usize) -> Vec<u8> {
    format!("fleetd-stmt-{index:04}").into_bytes()
}

fn put_result_metadata(out: &mut BytesMut, prepared: &Prepared) {
    if prepared.result.is_empty() {
        out.put_i32(0x0004);
        out.put_i32(0);
        return;
    }
    out.put_i32(0x0001);
    out.put_i32(prepared.result.len() as i32);
    put_string(out, KEYSPACE);
    put_string(out, &prepared.table);
    for (name, typ) in &prepared.result {
        put_string(out, name);
        out.put_i16(type_id(typ));
    }
}

/// The table, bind markers and result columns of one of fleetd's
/// statements, with types from the schema; panics on anything unknown.
fn describe(text: &str, tables: &HashMap<String, Table>) -> Prepared {
    let words: Vec<&str> = text.split_whitespace().collect();
    let qualified = words
        .iter()
        .position(|w| *w == "INTO" || *w == "FROM")
        .and_then(|i| words.get(i + 1))
        .unwrap_or_else(|| panic!("no table in {text}"));
    let (ks, table_name) = qualified
        .split_once('.')
        .unwrap_or_else(|| panic!("table not keyspace-qualified in {text}"));
    assert_eq!(ks, KEYSPACE, "{text}");
    let table = tables
        .get(table_name)
        .unwrap_or_else(|| panic!("table {table_name} is not in the schema: {text}"));
    let column_type = |name: &str| -> String {
        if let Some(t) = table.columns.get(name) {
            return t.clone();
        }
        match name {
            "write_time" => "bigint",
            "from_ts" | "to_ts" => "timestamp",
            "from_day" | "to_day" => "int",
            "row_limit" => "int",
            "from_id" | "to_id" | "after_device" => "text",
            other => panic!("bind marker :{other} is no column of {table_name}: {text}"),
        }
        .to_owned()
    };
    let mut markers = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b':' {
            let end = (i + 1..bytes.len())
                .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
                .unwrap_or(bytes.len());
            let name = &text[i + 1..end];
            markers.push((name.to_owned(), column_type(name)));
            i = end;
        } else {
            i += 1;
        }
    }
    assert!(!text.contains('?'), "positional marker in {text}");
    let mut result = Vec::new();
    if let Some(rest) = text.strip_prefix("SELECT ") {
        let cols = rest.split(" FROM ").next().expect("select list");
        for col in cols.split(',') {
            let col = col.trim();
            let typ = table
                .columns
                .get(col)
                .unwrap_or_else(|| panic!("column {col} is not in {table_name}: {text}"));
            result.push((col.to_owned(), typ.clone()));
        }
    }
    Prepared {
        text: text.to_owned(),
        table: table_name.to_owned(),
        markers,
        result,
    }
}

/// Tables of `schemas/cql/`, from the same text the migration runs.
fn parse_schema() -> HashMap<String, Table> {
    let mut tables = HashMap::new();
    for &(_, _, file) in fleetd_store::scylla::SCHEMA_FILES {
        for statement in fleetd_store::scylla::schema_statements(file) {
            let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ") else {
                panic!("unexpected statement {statement}");
            };
            let (name, rest) = rest.split_once(' ').expect("table name");
            let open = rest.find('(').expect("(");
            let mut depth = 0;
            let mut close = open;
            for (i, c) in rest.char_indices().skip(open) {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let body = &rest[open + 1..close];
            let mut parts = Vec::new();
            let (mut depth, mut start) = (0, 0);
            for (i, c) in body.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(body[start..i].trim());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            parts.push(body[start..].trim());
            let mut table = Table {
                columns: HashMap::new(),
                partition_key: Vec::new(),
                primary_key: Vec::new(),
                clustering_desc: rest[close..].contains("CLUSTERING ORDER BY")
                    && rest[close..].contains(" DESC)"),
            };
            for part in parts {
                if let Some(key) = part.strip_prefix("PRIMARY KEY") {
                    // `(a, b)` or `((a, b), c)`: strip the outer parentheses.
                    let key = key.trim();
                    let key = &key[1..key.len() - 1];
                    let pk = if let Some(inner) = key.strip_prefix('(') {
                        inner.split(')').next().expect("pk")
                    } else {
                        key.split(',').next().expect("pk")
                    };
                    table.partition_key = pk.split(',').map(|c| c.trim().to_owned()).collect();
                    table.primary_key = key
                        .replace(['(', ')'], "")
                        .split(',')
                        .map(|c| c.trim().to_owned())
                        .collect();
                } else {
                    let mut words = part.split_whitespace();
                    let col = words.next().expect("column");
                    let typ = words.next().expect("type");
                    if part.ends_with("PRIMARY KEY") {
                        table.partition_key = vec![col.to_owned()];
                        table.primary_key = vec![col.to_owned()];
                    }
                    table.columns.insert(col.to_owned(), typ.to_owned());
                }
            }
            assert!(!table.partition_key.is_empty(), "{name} has no key");
            assert!(
                table.primary_key.starts_with(&table.partition_key),
                "{name}: {table:?}"
            );
            tables.insert(name.to_owned(), table);
        }
    }
    tables
}

fn type_id(typ: &str) -> i16 {
    match typ {
        "bigint" => 0x0002,
        "boolean" => 0x0004,
        "double" => 0x0007,
        "float" => 0x0008,
        "int" => 0x0009,
        "timestamp" => 0x000B,
        "text" => 0x000D,
        other => panic!("type {other} not supported by the fake node"),
    }
}

fn read_value(body: &mut Bytes, typ: &str) -> Val {
    let len = body.get_i32();
    if len < 0 {
        return Val::Null;
    }
    let mut v = body.split_to(len as usize);
    match typ {
        "bigint" | "timestamp" => Val::Int(v.get_i64()),
        "int" => Val::Int(i64::from(v.get_i32())),
        "double" => Val::Float(v.get_f64()),
        "float" => Val::Float(f64::from(v.get_f32())),
        "boolean" => Val::Bool(v.get_u8() != 0),
        "text" => Val::Text(String::from_utf8(v.to_vec()).expect("utf-8")),
        other => panic!("type {other}"),
    }
}

fn put_value(out: &mut BytesMut, val: &Val, typ: &str) {
    let mut v = BytesMut::new();
    match (val, typ) {
        (Val::Null, _) => {
            out.put_i32(-1);
            return;
        }
        (Val::Int(i), "bigint" | "timestamp") => v.put_i64(*i),
        (Val::Int(i), "int") => v.put_i32(*i as i32),
        (Val::Float(f), "double") => v.put_f64(*f),
        (Val::Float(f), "float") => v.put_f32(*f as f32),
        (Val::Bool(b), "boolean") => v.put_u8(u8::from(*b)),
        (Val::Text(s), "text") => v.put_slice(s.as_bytes()),
        (val, typ) => panic!("{val:?} is not a {typ}"),
    }
    out.put_i32(v.len() as i32);
    out.put_slice(&v);
}

fn read_long_string(body: &mut Bytes) -> String {
    let len = body.get_i32() as usize;
    String::from_utf8(body.split_to(len).to_vec()).expect("utf-8")
}

fn read_short_bytes(body: &mut Bytes) -> Vec<u8> {
    let len = body.get_u16() as usize;
    body.split_to(len).to_vec()
}

fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_short_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// A minimal in-memory CQL engine for fleetd's statement shapes, so the
/// conformance suite can run the ScyllaDB backend's logic against the fake
/// node: upserts keyed by the primary key, write timestamps (a row or
/// tombstone with a newer timestamp wins, as in ScyllaDB), row and
/// partition deletes,
/// equality and range conditions, `ORDER BY ts ASC` and `LIMIT`. TTLs are
/// not modelled.
#[derive(Default)]
struct Engine {
    rows: HashMap<String, Vec<StoredRow>>,
    /// Deletion timestamps by (table, key), the key being a whole primary
    /// key or a partition key.
    tombstones: HashMap<(String, Vec<Key>), i64>,
    clock: i64,
}

#[derive(Debug, Clone)]
struct StoredRow {
    key: Vec<Key>,
    cols: HashMap<String, Val>,
    ts: i64,
}

/// A comparable key value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Text(String),
}

fn key_of(val: &Val) -> Key {
    match val {
        Val::Int(i) => Key::Int(*i),
        Val::Text(t) => Key::Text(t.clone()),
        other => panic!("{other:?} cannot be a key"),
    }
}

impl Engine {
    /// A server-side write timestamp in µs, strictly increasing.
    fn now_us(&mut self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_micros() as i64;
        self.clock = now.max(self.clock + 1);
        self.clock
    }

    /// Applies one EXECUTE; returns result rows (in result column order)
    /// for a SELECT.
    fn execute(
        &mut self,
        p: &Prepared,
        table: &Table,
        values: &HashMap<String, Val>,
    ) -> Vec<Vec<Val>> {
        let text = p.text.as_str();
        let ts = match values.get("write_time") {
            Some(Val::Int(t)) => *t,
            _ => self.now_us(),
        };
        if text.starts_with("INSERT") {
            let cols: HashMap<String, Val> = p
                .markers
                .iter()
                .filter(|(name, _)| table.columns.contains_key(name))
                .map(|(name, _)| (name.clone(), values[name].clone()))
                .collect();
            let key: Vec<Key> = table.primary_key.iter().map(|c| key_of(&cols[c])).collect();
            // A row or partition tombstone at least as new shadows the write.
            let shadowed = (table.partition_key.len()..=key.len()).any(|n| {
                self.tombstones
                    .get(&(p.table.clone(), key[..n].to_vec()))
                    .is_some_and(|&dead| dead >= ts)
            });
            if shadowed {
                return Vec::new();
            }
            let rows = self.rows.entry(p.table.clone()).or_default();
            match rows.iter_mut().find(|r| r.key == key) {
                Some(row) if row.ts > ts => {}
                Some(row) => *row = StoredRow { key, cols, ts },
                None => rows.push(StoredRow { key, cols, ts }),
            }
            return Vec::new();
        }
        let conditions = conditions(text, values);
        if text.starts_with("DELETE") {
            // A row delete names the whole primary key; a partition delete
            // only the partition key.
            let key: Vec<Key> = table
                .primary_key
                .iter()
                .map_while(|c| {
                    conditions
                        .iter()
                        .find(|(col, op, _)| col == c && op == "=")
                        .map(|(_, _, v)| v.clone())
                })
                .collect();
            assert!(
                key.len() == table.primary_key.len() || key.len() == table.partition_key.len(),
                "DELETE must name a row or a partition: {text}"
            );
            let dead = self
                .tombstones
                .entry((p.table.clone(), key.clone()))
                .or_insert(ts);
            *dead = (*dead).max(ts);
            if let Some(rows) = self.rows.get_mut(&p.table) {
                rows.retain(|r| !(r.key.starts_with(&key) && r.ts <= ts));
            }
            return Vec::new();
        }
        let mut found: Vec<&StoredRow> = self
            .rows
            .get(&p.table)
            .map(|rows| {
                rows.iter()
                    .filter(|r| {
                        conditions.iter().all(|(col, op, v)| {
                            let have = key_of(&r.cols[col]);
                            match op.as_str() {
                                "=" => have == *v,
                                ">" => have > *v,
                                ">=" => have >= *v,
                                "<=" => have <= *v,
                                other => panic!("operator {other}"),
                            }
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Real nodes return a partition's rows in clustering order (and
        // `ORDER BY col ASC|DESC` picks the direction); the fake keeps
        // insertion order, so it sorts: by primary key, or as asked.
        found.sort_by(|a, b| a.key.cmp(&b.key));
        if table.clustering_desc {
            found.reverse();
        }
        if let Some(order) = text.split(" ORDER BY ").nth(1) {
            let mut words = order.split_whitespace();
            let col = words.next().expect("order column").to_owned();
            found.sort_by_key(|r| key_of(&r.cols[&col]));
            if words.next() == Some("DESC") {
                found.reverse();
            }
        }
        if let Some(Val::Int(limit)) = values.get("row_limit") {
            found.truncate(*limit as usize);
        }
        found
            .into_iter()
            .map(|r| {
                p.result
                    .iter()
                    .map(|(c, _)| r.cols.get(c).cloned().unwrap_or(Val::Null))
                    .collect()
            })
            .collect()
    }
}

/// The `col op :marker` / `col op 'literal'` conditions of a WHERE clause.
fn conditions(text: &str, values: &HashMap<String, Val>) -> Vec<(String, String, Key)> {
    let Some(clause) = text.split(" WHERE ").nth(1) else {
        return Vec::new();
    };
    let clause = clause.split(" ORDER BY ").next().unwrap_or(clause);
    let clause = clause.split(" LIMIT ").next().unwrap_or(clause);
    clause
        .split(" AND ")
        .map(|cond| {
            let mut parts = cond.split_whitespace();
            let col = parts.next().expect("column").to_owned();
            let op = parts.next().expect("operator").to_owned();
            let operand = parts.next().expect("operand");
            let value = match operand.strip_prefix(':') {
                Some(marker) => key_of(&values[marker]),
                None => Key::Text(operand.trim_matches('\'').to_owned()),
            };
            (col, op, value)
        })
        .collect()
}
