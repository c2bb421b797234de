"""Replays the statements the Brownie FastAPI API sends, request by request.

Usage: brownie_api_replay.py MODE DSN SPEC

MODE selects the driver, as the API's stack would drive it:
  psycopg3           psycopg 3, default prepare_threshold (5): a statement
                     becomes a named prepared statement (_pg3_N) once it
                     has run 5 times on the connection; a ROLLBACK makes
                     psycopg send DEALLOCATE ALL and start counting again,
                     so the hot statements run in streaks of committed
                     requests or several times in one request
  psycopg3-prepare0  psycopg 3 with prepare_threshold=0: every statement is
                     prepared at its first execution
  sqlalchemy         SQLAlchemy 1.4 Core on psycopg2 (postgresql+psycopg2,
                     pool_pre_ping): client-side binding, literals in the SQL,
                     simple protocol
DSN is a libpq connection string. SPEC is a JSON object:
  {"seed": "...", "prefix": "...", "teams": [t0, t1, t2, t3]}
seed derives every id, prefix makes names, slugs and e-mails unique in a
database that holds several runs, and the teams are the four team ids (the
Go test puts t0 and t1 on shard-0, t2 and t3 on shard-1).

Every request is one transaction (the API's Session per request, psycopg in
non-autocommit mode): it starts with the user lookup by id that carries no
team, and ends with COMMIT, or ROLLBACK for read-only endpoints and after an
error. Statement shapes follow SQLAlchemy 2.0 on psycopg 3: qualified
column lists, $n::TYPE bind casts, ids and team ids always parameters.
Timestamps are set explicitly (never now()), so two runs with the same SPEC
on databases in the same state print the same transcript.

Prints one JSON object: {"mode", "prepared", "transcript": [entry...]} with
one entry per statement and per transaction end: label, rows (as text),
status (command tag), rowcount, error (SQLSTATE), message, unordered (the
statement has no ORDER BY: compare its rows as a multiset). "prepared" is
how many statements psycopg prepared over the run (0 for psycopg2). Exits
non-zero only when the script itself breaks.
"""
import datetime
import hashlib
import json
import re
import sys
import uuid

MODE, DSN, SPEC = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
SEED, PREFIX = SPEC["seed"], SPEC["prefix"]
T0, T1, T2, T3 = (uuid.UUID(t) for t in SPEC["teams"])

BASE = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def uid(name):
    """A UUID (version 4 layout) derived from the seed and name."""
    return uuid.UUID(bytes=hashlib.sha256(f"{SEED}/{name}".encode()).digest()[:16], version=4)


_clock = [0]


def tick():
    """The next timestamp of the run: strictly increasing, never now()."""
    _clock[0] += 1
    return BASE + datetime.timedelta(minutes=_clock[0])


# Column lists of the Brownie schema (deploy/sql/01_schema.sql).
COLUMNS = {
    "organizations": "id created_at updated_at name slug description is_active config_yaml config_json "
    "config_version settings max_teams max_users_per_team",
    "teams": "id created_at updated_at org_id created_by updated_by name slug description is_active config_yaml "
    "config_json config_version settings permissions organization_id",
    "users": "id created_at updated_at org_id created_by updated_by deleted_at deleted_by email username full_name "
    "avatar_url password_hash is_active is_verified oidc_subject oidc_provider team_id role preferences organization_id",
    "incidents": "id created_at updated_at org_id created_by updated_by version idempotency_key title description "
    "status priority assigned_to started_at resolved_at closed_at tags incident_metadata response_time_minutes "
    "resolution_time_minutes team_id organization_id",
    "agent_configs": "id created_at updated_at org_id created_by updated_by version name description agent_type "
    "is_active config_yaml config_json config_version config execution_timeout_seconds max_retries "
    "retry_delay_seconds triggers conditions tags config_metadata team_id organization_id",
    "stats": "id created_at updated_at org_id metric_name metric_type value count timestamp time_window labels "
    "description unit team_id organization_id",
}
COLUMNS = {t: c.split() for t, c in COLUMNS.items()}

# SQLAlchemy 2.0's psycopg dialect renders a cast after each bind of these
# types; booleans and enum labels go without.
CASTS = {}
for _c in "id org_id created_by updated_by deleted_by team_id organization_id assigned_to".split():
    CASTS[_c] = "UUID"
for _c in "created_at updated_at deleted_at started_at resolved_at closed_at timestamp".split():
    CASTS[_c] = "TIMESTAMP WITH TIME ZONE"
for _c in ("max_teams max_users_per_team version response_time_minutes resolution_time_minutes "
           "execution_timeout_seconds max_retries retry_delay_seconds count").split():
    CASTS[_c] = "INTEGER"
for _c in ("config_json settings permissions preferences tags incident_metadata config triggers conditions "
           "config_metadata labels").split():
    CASTS[_c] = "JSON"
for _c in ("name slug email username full_name title idempotency_key metric_name metric_type time_window unit "
           "password_hash config_version description config_yaml avatar_url oidc_subject oidc_provider").split():
    CASTS[_c] = "VARCHAR"
CASTS["value"] = "FLOAT"


def quote(col):
    return '"timestamp"' if col == "timestamp" else col


def cols(table):
    """The ORM's select list: every column, qualified and labelled."""
    return ", ".join(f"{table}.{quote(c)} AS {table}_{c}" for c in COLUMNS[table])


def bind(name, col=None):
    cast = CASTS.get(col or name)
    return f"%({name})s::{cast}" if cast else f"%({name})s"


def insert(table, row):
    """An ORM INSERT of row (column → value) in the table's column order."""
    names = [c for c in COLUMNS[table] if c in row]
    return (f"INSERT INTO {table} ({', '.join(quote(c) for c in names)}) "
            f"VALUES ({', '.join(bind(c) for c in names)})"), row


def J(v):
    """A JSON value as the ORM binds it: serialised text."""
    return json.dumps(v, sort_keys=True)


def as_text(v):
    if v is None:
        return None
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


class Failed(Exception):
    """A statement failed; the request rolls back."""


# ---------------------------------------------------------------------------
# Drivers: execute(sql, params) → (rows or None, status, rowcount), raising
# DBError(sqlstate, message).


class DBError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class Psycopg3:
    def __init__(self, prepare_threshold):
        import psycopg
        self.psycopg = psycopg
        self.threshold = prepare_threshold
        self.conn = None
        self.connect()

    def connect(self):
        kw = {} if self.threshold is None else {"prepare_threshold": self.threshold}
        self.conn = self.psycopg.connect(DSN, **kw)
        assert not self.conn.autocommit
        if self.threshold is None:
            assert self.conn.prepare_threshold == 5, self.conn.prepare_threshold

    def error(self, e):
        code = getattr(getattr(e, "diag", None), "sqlstate", None) or getattr(e, "sqlstate", None)
        return DBError(code or "python:" + type(e).__name__, str(e).strip())

    def begin(self):
        if self.conn.closed:  # a server or the sidecar closed it: the pool would reconnect
            try:
                self.connect()
            except self.psycopg.Error as e:
                raise self.error(e) from None

    def execute(self, sql, params):
        try:
            cur = self.conn.execute(sql, params)
            rows = cur.fetchall() if cur.description is not None else None
            return rows, cur.statusmessage, cur.rowcount
        except self.psycopg.Error as e:
            raise self.error(e) from None

    def end(self, how):
        try:
            (self.conn.commit if how == "COMMIT" else self.conn.rollback)()
        except self.psycopg.Error as e:
            err = self.error(e)
            if not self.conn.closed:
                try:
                    self.conn.rollback()
                except self.psycopg.Error:
                    pass
            raise err from None

    def prepared(self):
        # How many statements psycopg prepared over the run (its counter
        # of names; the cache itself empties at every ROLLBACK).
        return getattr(self.conn._prepared, "_prepared_idx", -1)


_BIND = re.compile(r"%\((\w+)\)s(?:::(?:TIMESTAMP WITH TIME ZONE|\w+))?")


class SQLAlchemy:
    """SQLAlchemy 1.4 Core, future mode, on psycopg2: textual statements with
    :name binds that psycopg2 interpolates client-side."""

    def __init__(self):
        import psycopg2
        import sqlalchemy
        self.sa = sqlalchemy
        self.engine = sqlalchemy.create_engine(
            "postgresql+psycopg2://", creator=lambda: psycopg2.connect(DSN),
            pool_pre_ping=True, future=True)
        self.conn = None
        self.texts = {}

    def error(self, e):
        orig = getattr(e, "orig", None)
        code = getattr(orig, "pgcode", None)
        return DBError(code or "python:" + type(orig or e).__name__, str(orig or e).strip().split("\n[SQL:")[0])

    def begin(self):
        try:
            self.conn = self.engine.connect()  # checkout: pre-ping SELECT 1
        except self.sa.exc.DBAPIError as e:
            raise self.error(e) from None

    def execute(self, sql, params):
        t = self.texts.get(sql)
        if t is None:
            # SQLAlchemy 1.4's psycopg2 dialect renders no bind casts.
            t = self.texts[sql] = self.sa.text(_BIND.sub(r":\1", sql))
        params = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in params.items()}
        try:
            res = self.conn.execute(t, params)
            rows = [tuple(r) for r in res.fetchall()] if res.returns_rows else None
            status = getattr(res.context.cursor, "statusmessage", None)
            return rows, status, res.rowcount
        except self.sa.exc.DBAPIError as e:
            raise self.error(e) from None

    def end(self, how):
        conn, self.conn = self.conn, None
        try:
            (conn.commit if how == "COMMIT" else conn.rollback)()
        except self.sa.exc.DBAPIError as e:
            raise self.error(e) from None
        finally:
            conn.close()

    def prepared(self):
        return 0  # psycopg2 never prepares


# ---------------------------------------------------------------------------
# Requests.

transcript = []


class Request:
    def __init__(self, driver, label):
        self.d, self.label = driver, label

    def q(self, what, sql, params=None, unordered=False):
        """Runs one statement and records it; raises Failed on an error."""
        if isinstance(sql, tuple):
            sql, params = sql
        entry = {"label": f"{self.label}: {what}", "rows": None, "status": None, "rowcount": None,
                 "error": None, "message": None}
        if unordered:
            entry["unordered"] = True
        transcript.append(entry)
        try:
            rows, status, rowcount = self.d.execute(sql, params or {})
        except DBError as e:
            entry["error"], entry["message"] = e.code, e.message
            raise Failed() from None
        entry["status"], entry["rowcount"] = status, rowcount
        if rows is not None:
            entry["rows"] = [[as_text(v) for v in r] for r in rows]
        return rows or []

    def auth(self, user):
        """get_current_user: the first statement of every authenticated request."""
        return self.q("current user", f"SELECT {cols('users')} FROM users WHERE users.id = %(id_1)s::UUID "
                      "AND users.is_active = true AND users.deleted_at IS NULL LIMIT %(param_1)s::INTEGER",
                      {"id_1": user, "param_1": 1})


_requests = [0]


def request(driver, name, body, end="COMMIT"):
    """Runs body(Request) as one transaction ended by end (COMMIT or
    ROLLBACK); after a failed statement it rolls back. Returns whether the
    request succeeded."""
    _requests[0] += 1
    r = Request(driver, f"{_requests[0]:03d} {name}")
    entry = None
    try:
        driver.begin()
        body(r)
    except Failed:
        end = "ROLLBACK"
        entry = {"label": f"{r.label}: ROLLBACK after the error", "error": None, "message": None}
    except DBError as e:  # at checkout
        transcript.append({"label": f"{r.label}: connect", "error": e.code, "message": e.message})
        return False
    if entry is None:
        entry = {"label": f"{r.label}: {end}", "error": None, "message": None}
    transcript.append(entry)
    try:
        driver.end(end)
    except DBError as e:
        entry["error"], entry["message"] = e.code, e.message
        return False
    return entry["label"].endswith(": COMMIT")


# ---------------------------------------------------------------------------
# The scenario.

ORG = uid("org")
ADMIN = uid("user/admin")
U1, U2, U3 = uid("user/1"), uid("user/2"), uid("user/3")
TEAMS = [T0, T1, T2, T3]
MEMBER = {T0: U2, T1: ADMIN, T2: U1, T3: U3}  # who acts for each team
STATUSES = ["OPEN", "IN_PROGRESS", "RESOLVED", "CLOSED", "CANCELLED"]
PRIORITIES = ["LOW", "MEDIUM", "HIGH", "CRITICAL"]


def org_by_id(r):
    return r.q("organization by id", f"SELECT {cols('organizations')} FROM organizations "
               "WHERE organizations.id = %(pk_1)s::UUID", {"pk_1": ORG})


def team_by_id(r, team):
    return r.q("team by id", f"SELECT {cols('teams')} FROM teams WHERE teams.id = %(pk_1)s::UUID",
               {"pk_1": team})


def user_row(i, team, role, ts):
    return {"id": i, "created_at": ts, "updated_at": ts, "org_id": ORG, "email": f"{PREFIX}-{i.hex[:8]}@example.com",
            "username": f"{PREFIX}-{i.hex[:8]}", "full_name": f"User {i.hex[:4]}", "password_hash": "argon2$x",
            "is_active": True, "is_verified": False, "team_id": team, "role": role,
            "preferences": J({}), "organization_id": ORG}


def team_row(team, n, ts):
    return {"id": team, "created_at": ts, "updated_at": ts, "org_id": ORG, "created_by": ADMIN, "updated_by": ADMIN,
            "name": f"{PREFIX} team {n}", "slug": f"{PREFIX}-team-{n}", "description": None, "is_active": True,
            "settings": J({}), "permissions": J({}), "organization_id": ORG}


def run(d):
    # POST /auth/signup: organization, its first team and its admin in one
    # transaction (organizations and users are on every shard, the team on
    # its own).
    ts = tick()
    admin = user_row(ADMIN, T0, "ADMIN", ts)

    def signup(r):
        r.q("user by email", f"SELECT {cols('users')} FROM users WHERE users.email = %(email_1)s::VARCHAR "
            "LIMIT %(param_1)s::INTEGER", {"email_1": admin["email"], "param_1": 1})
        r.q("insert organization", insert("organizations", {
            "id": ORG, "created_at": ts, "updated_at": ts, "name": f"{PREFIX} org", "slug": f"{PREFIX}-org",
            "description": None, "is_active": True, "settings": J({}), "max_teams": 10, "max_users_per_team": 50}))
        r.q("insert team", insert("teams", team_row(T0, 0, ts)))
        r.q("insert user", insert("users", admin))
    request(d, "POST /auth/signup", signup)
    request(d, "signup refresh", lambda r: r.auth(ADMIN), end="ROLLBACK")

    # POST /organizations/{org}/teams, three more teams.
    for n, team in [(1, T1), (2, T2), (3, T3)]:
        def create_team(r, n=n, team=team):
            r.auth(ADMIN)
            org_by_id(r)
            r.q("team name taken", f"SELECT {cols('teams')} FROM teams WHERE teams.org_id = %(org_id_1)s::UUID "
                "AND (teams.name = %(name_1)s::VARCHAR OR teams.slug = %(slug_1)s::VARCHAR) LIMIT %(param_1)s::INTEGER",
                {"org_id_1": ORG, "name_1": f"{PREFIX} team {n}", "slug_1": f"{PREFIX}-team-{n}", "param_1": 1})
            r.q("insert team", insert("teams", team_row(team, n, tick())))
        request(d, f"POST /organizations/org/teams ({n})", create_team)

    # POST /organizations/{org}/users: users on teams of both shards.
    for user, team, role in [(U1, T2, "MEMBER"), (U2, T0, "MEMBER"), (U3, T3, "VIEWER")]:
        row = user_row(user, team, role, tick())

        def create_user(r, row=row, team=team):
            r.auth(ADMIN)
            org_by_id(r)
            r.q("team in organization", f"SELECT {cols('teams')} FROM teams WHERE teams.id = %(id_1)s::UUID "
                "AND teams.org_id = %(org_id_1)s::UUID LIMIT %(param_1)s::INTEGER",
                {"id_1": team, "org_id_1": ORG, "param_1": 1})
            r.q("email or username taken", f"SELECT {cols('users')} FROM users WHERE users.email = %(email_1)s::VARCHAR "
                "OR users.username = %(username_1)s::VARCHAR LIMIT %(param_1)s::INTEGER",
                {"email_1": row["email"], "username_1": row["username"], "param_1": 1})
            r.q("insert user", insert("users", row))
        request(d, "POST /organizations/org/users", create_user)

    # POST /teams/{t1}/members: U1 moves from t2 (shard-1) to t1 (shard-0).
    def add_member(r):
        r.auth(ADMIN)
        team_by_id(r, T1)
        r.q("user by id", f"SELECT {cols('users')} FROM users WHERE users.id = %(pk_1)s::UUID", {"pk_1": U1})
        r.q("move user", "UPDATE users SET updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
            "team_id=%(team_id)s::UUID, role=%(role)s WHERE users.id = %(users_id)s::UUID",
            {"updated_at": tick(), "team_id": T1, "role": "MEMBER", "users_id": U1})
    request(d, "POST /teams/t1/members", add_member)

    # PUT /users/{u2} with a team_id: U2 moves from t0 (shard-0) to t3 (shard-1).
    def put_user(r):
        r.auth(ADMIN)
        r.q("user by id", f"SELECT {cols('users')} FROM users WHERE users.id = %(id_1)s::UUID "
            "AND users.deleted_at IS NULL LIMIT %(param_1)s::INTEGER", {"id_1": U2, "param_1": 1})
        team_by_id(r, T3)
        r.q("update user", "UPDATE users SET updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
            "full_name=%(full_name)s::VARCHAR, team_id=%(team_id)s::UUID WHERE users.id = %(users_id)s::UUID",
            {"updated_at": tick(), "full_name": "Moved User", "team_id": T3, "users_id": U2})
    request(d, "PUT /users/u2", put_user)
    request(d, "GET /users/u2", lambda r: (r.auth(ADMIN), r.q("user by id", f"SELECT {cols('users')} FROM users "
            "WHERE users.id = %(id_1)s::UUID AND users.deleted_at IS NULL LIMIT %(param_1)s::INTEGER",
            {"id_1": U2, "param_1": 1})), end="ROLLBACK")

    # GET and PUT /teams/{t2}.
    request(d, "GET /teams/t2", lambda r: (r.auth(U1), team_by_id(r, T2)), end="ROLLBACK")

    def put_team(r):
        r.auth(ADMIN)
        team_by_id(r, T2)
        r.q("update team", "UPDATE teams SET updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
            "description=%(description)s::VARCHAR, updated_by=%(updated_by)s::UUID WHERE teams.id = %(teams_id)s::UUID",
            {"updated_at": tick(), "description": "on call", "updated_by": ADMIN, "teams_id": T2})
    request(d, "PUT /teams/t2", put_team)

    # Organization-wide reads: teams (no ORDER BY), users by cursor, the
    # unfiltered organization list of an admin, the Alembic version.
    def list_teams(r):
        r.auth(ADMIN)
        org_by_id(r)
        r.q("teams of the organization", f"SELECT {cols('teams')} FROM teams WHERE teams.org_id = %(org_id_1)s::UUID "
            "AND teams.is_active = true", {"org_id_1": ORG}, unordered=True)
    request(d, "GET /organizations/org/teams", list_teams, end="ROLLBACK")

    def list_users(r):
        r.auth(ADMIN)
        org_by_id(r)
        page = r.q("users page 1", f"SELECT {cols('users')} FROM users WHERE users.org_id = %(org_id_1)s::UUID "
                   "AND users.deleted_at IS NULL ORDER BY users.id LIMIT %(param_1)s::INTEGER",
                   {"org_id_1": ORG, "param_1": 2})
        cursor = page[-1][0] if page else uuid.UUID(int=0)
        r.q("users page 2", f"SELECT {cols('users')} FROM users WHERE users.org_id = %(org_id_1)s::UUID "
            "AND users.deleted_at IS NULL AND users.id > %(id_1)s::UUID ORDER BY users.id LIMIT %(param_1)s::INTEGER",
            {"org_id_1": ORG, "id_1": cursor, "param_1": 2})
    request(d, "GET /organizations/org/users", list_users, end="ROLLBACK")

    def list_orgs(r):
        r.auth(ADMIN)
        r.q("every organization", f"SELECT {cols('organizations')} FROM organizations", unordered=True)
        r.q("alembic version", "SELECT alembic_version.version_num FROM alembic_version")
    request(d, "GET /organizations (admin)", list_orgs, end="ROLLBACK")

    # POST /teams/{t}/incidents: 14 incidents over the four teams, one
    # committed request after another, so that psycopg prepares the hot
    # statements (a ROLLBACK makes it DEALLOCATE ALL and count again).
    incidents = []
    for i in range(14):
        team = TEAMS[i % 4]
        inc = uid(f"incident/{i}")
        ts = tick()
        row = {"id": inc, "created_at": ts, "updated_at": ts, "org_id": ORG, "created_by": MEMBER[team],
               "version": 1, "idempotency_key": f"{PREFIX}-incident-{i}", "title": f"incident {i}",
               "description": "disk full" if i % 3 == 0 else "latency", "status": STATUSES[i % 5],
               "priority": PRIORITIES[i % 4], "assigned_to": ADMIN if i % 2 else None, "started_at": ts,
               "tags": J(["db", f"n{i}"]), "incident_metadata": J({"i": i}), "team_id": team, "organization_id": ORG}
        incidents.append(row)

        def create_incident(r, row=row, team=team):
            r.auth(MEMBER[team])
            team_by_id(r, team)
            r.q("idempotency key seen", f"SELECT {cols('incidents')} FROM incidents "
                "WHERE incidents.idempotency_key = %(idempotency_key_1)s::VARCHAR LIMIT %(param_1)s::INTEGER",
                {"idempotency_key_1": row["idempotency_key"], "param_1": 1})
            sql, params = insert("incidents", row)
            r.q("insert incident", sql + " RETURNING incidents.created_at, incidents.version", params)
        request(d, f"POST /teams/t{i % 4}/incidents ({i})", create_incident)
    # The refresh after each commit (a new transaction, ROLLBACK at the
    # end): GET by id, no team key.
    for i, row in enumerate(incidents):
        request(d, f"incident {i} refresh", lambda r, inc=row["id"]: r.q("incident by id", f"SELECT {cols('incidents')} "
                "FROM incidents WHERE incidents.id = %(pk_1)s::UUID", {"pk_1": inc}), end="ROLLBACK")

    # GET /teams/{t}/incidents, two pages each (cursor id > last), twice;
    # with status and search filters.
    for rnd in range(2):
        for n, team in enumerate(TEAMS):
            def list_incidents(r, team=team):
                r.auth(MEMBER[team])
                page = r.q("incidents page 1", f"SELECT {cols('incidents')} FROM incidents "
                           "WHERE incidents.team_id = %(team_id_1)s::UUID ORDER BY incidents.created_at DESC "
                           "LIMIT %(param_1)s::INTEGER", {"team_id_1": team, "param_1": 2})
                cursor = page[-1][0] if page else uuid.UUID(int=0)
                r.q("incidents page 2", f"SELECT {cols('incidents')} FROM incidents "
                    "WHERE incidents.team_id = %(team_id_1)s::UUID AND incidents.id > %(id_1)s::UUID "
                    "ORDER BY incidents.created_at DESC LIMIT %(param_1)s::INTEGER",
                    {"team_id_1": team, "id_1": cursor, "param_1": 2})
                r.q("incidents filtered", f"SELECT {cols('incidents')} FROM incidents "
                    "WHERE incidents.team_id = %(team_id_1)s::UUID AND incidents.status = %(status_1)s "
                    "AND incidents.created_at >= %(created_at_1)s::TIMESTAMP WITH TIME ZONE "
                    "AND (incidents.title ILIKE %(title_1)s::VARCHAR OR incidents.description ILIKE %(description_1)s::VARCHAR) "
                    "ORDER BY incidents.created_at DESC LIMIT %(param_1)s::INTEGER",
                    {"team_id_1": team, "status_1": "OPEN", "created_at_1": BASE, "title_1": "%incident%",
                     "description_1": "%disk%", "param_1": 10})
            request(d, f"GET /teams/t{n}/incidents (round {rnd})", list_incidents, end="ROLLBACK")

    # Organization-wide incident lists, which fan out: pages by
    # ORDER BY … LIMIT … OFFSET, the total for the pager, counts by status.
    for rnd in range(2):
        def org_incidents(r):
            r.auth(ADMIN)
            r.q("incident total", "SELECT count(*) AS count_1 FROM (SELECT incidents.id AS incidents_id FROM incidents "
                "WHERE incidents.org_id = %(org_id_1)s::UUID) AS anon_1", {"org_id_1": ORG})
            for offset in range(0, 18, 3):  # six pages in one transaction: prepared
                r.q(f"incidents offset {offset}", f"SELECT {cols('incidents')} FROM incidents "
                    "WHERE incidents.org_id = %(org_id_1)s::UUID ORDER BY incidents.created_at DESC "
                    "LIMIT %(param_1)s::INTEGER OFFSET %(param_2)s::INTEGER",
                    {"org_id_1": ORG, "param_1": 3, "param_2": offset})
            r.q("active incidents, newest first", "SELECT incidents.id AS incidents_id, incidents.title AS incidents_title "
                "FROM incidents WHERE incidents.org_id = %(org_id_1)s::UUID AND incidents.status IN (%(status_1)s, %(status_2)s) "
                "ORDER BY incidents.created_at DESC LIMIT %(param_1)s::INTEGER",
                {"org_id_1": ORG, "status_1": "OPEN", "status_2": "IN_PROGRESS", "param_1": 4})
            r.q("incidents by status", "SELECT incidents.status AS incidents_status, count(incidents.id) AS count_1 "
                "FROM incidents WHERE incidents.org_id = %(org_id_1)s::UUID GROUP BY incidents.status "
                "ORDER BY incidents.status", {"org_id_1": ORG})
        request(d, f"GET /organizations/org/incidents (round {rnd})", org_incidents, end="ROLLBACK")

    # PUT /incidents/{id}: by id, no team key.
    for i in (1, 6):
        inc = incidents[i]["id"]

        def put_incident(r, inc=inc, i=i):
            r.auth(ADMIN)
            r.q("incident by id", f"SELECT {cols('incidents')} FROM incidents WHERE incidents.id = %(pk_1)s::UUID",
                {"pk_1": inc})
            r.q("update incident", "UPDATE incidents SET updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
                "version=%(version)s::INTEGER, title=%(title)s::VARCHAR, status=%(status)s, "
                "resolved_at=%(resolved_at)s::TIMESTAMP WITH TIME ZONE WHERE incidents.id = %(incidents_id)s::UUID",
                {"updated_at": tick(), "version": 2, "title": f"incident {i} (resolved)", "status": "RESOLVED",
                 "resolved_at": tick(), "incidents_id": inc})
        request(d, f"PUT /incidents/{i}", put_incident)

    # DELETE /incidents/{id}, then GET it: no row.
    inc = incidents[13]["id"]

    def delete_incident(r):
        r.auth(ADMIN)
        r.q("incident by id", f"SELECT {cols('incidents')} FROM incidents WHERE incidents.id = %(pk_1)s::UUID",
            {"pk_1": inc})
        r.q("delete incident", "DELETE FROM incidents WHERE incidents.id = %(id)s::UUID", {"id": inc})
    request(d, "DELETE /incidents/13", delete_incident)
    request(d, "GET /incidents/13", lambda r: (r.auth(ADMIN), r.q("incident by id", f"SELECT {cols('incidents')} "
            "FROM incidents WHERE incidents.id = %(pk_1)s::UUID", {"pk_1": inc})), end="ROLLBACK")

    # A request that fails: an incident whose idempotency key another
    # request inserted meanwhile (the check passed) → 23505, rolled back.
    dup = dict(incidents[2], id=uid("incident/dup"), title="duplicate", created_at=tick())

    def duplicate_incident(r):
        r.auth(MEMBER[T2])
        team_by_id(r, T2)
        r.q("insert duplicate incident", insert("incidents", dup))
    request(d, "POST /teams/t2/incidents (duplicate key)", duplicate_incident)
    # The same for a user whose e-mail is taken (a table on every shard).
    dupuser = user_row(uid("user/dup"), T2, "MEMBER", tick())
    dupuser["email"] = user_row(U3, T3, "VIEWER", BASE)["email"]

    def duplicate_user(r):
        r.auth(ADMIN)
        team_by_id(r, T2)
        r.q("insert user with a taken e-mail", insert("users", dupuser))
    request(d, "POST /organizations/org/users (duplicate e-mail)", duplicate_user)
    request(d, "after the failures", lambda r: (
        r.q("duplicate incident", "SELECT count(*) AS count_1 FROM incidents WHERE incidents.id = %(id_1)s::UUID",
            {"id_1": dup["id"]}),
        r.q("duplicate user", "SELECT count(*) AS count_1 FROM users WHERE users.id = %(id_1)s::UUID",
            {"id_1": dupuser["id"]})), end="ROLLBACK")

    # Agent configs: create two per shard, list, update (version + 1),
    # delete by id.
    agents = []
    for n, team in enumerate(TEAMS):
        agent = uid(f"agent/{n}")
        agents.append((agent, team))
        ts = tick()
        row = {"id": agent, "created_at": ts, "updated_at": ts, "org_id": ORG, "created_by": MEMBER[team],
               "updated_by": MEMBER[team], "version": 1, "name": f"responder {n}", "description": None,
               "agent_type": ["INCIDENT_RESPONSE", "MONITORING"][n % 2], "is_active": True, "config": J({"n": n}),
               "execution_timeout_seconds": 300, "max_retries": 3, "retry_delay_seconds": 60,
               "triggers": J(["incident.created"]), "tags": J([]), "team_id": team, "organization_id": ORG}

        def create_agent(r, row=row, team=team):
            r.auth(MEMBER[team])
            team_by_id(r, team)
            r.q("name taken in team", f"SELECT {cols('agent_configs')} FROM agent_configs "
                "WHERE agent_configs.team_id = %(team_id_1)s::UUID AND agent_configs.name = %(name_1)s::VARCHAR "
                "LIMIT %(param_1)s::INTEGER", {"team_id_1": team, "name_1": row["name"], "param_1": 1})
            r.q("insert agent config", insert("agent_configs", row))
        request(d, f"POST /teams/t{n}/agent-configs", create_agent)

    for n, team in enumerate(TEAMS):
        def list_agents(r, team=team):
            r.auth(MEMBER[team])
            r.q("agent configs", f"SELECT {cols('agent_configs')} FROM agent_configs "
                "WHERE agent_configs.team_id = %(team_id_1)s::UUID AND agent_configs.is_active = %(is_active_1)s "
                "ORDER BY agent_configs.id LIMIT %(param_1)s::INTEGER",
                {"team_id_1": team, "is_active_1": True, "param_1": 50})
        request(d, f"GET /teams/t{n}/agent-configs", list_agents, end="ROLLBACK")

    for n in (1, 2):
        agent, team = agents[n]

        def put_agent(r, agent=agent, team=team, n=n):
            r.auth(MEMBER[team])
            r.q("agent config by id", f"SELECT {cols('agent_configs')} FROM agent_configs "
                "WHERE agent_configs.id = %(pk_1)s::UUID", {"pk_1": agent})
            r.q("new name taken", f"SELECT {cols('agent_configs')} FROM agent_configs "
                "WHERE agent_configs.team_id = %(team_id_1)s::UUID AND agent_configs.name = %(name_1)s::VARCHAR "
                "AND agent_configs.id != %(id_1)s::UUID LIMIT %(param_1)s::INTEGER",
                {"team_id_1": team, "name_1": f"responder {n} v2", "id_1": agent, "param_1": 1})
            r.q("update agent config", "UPDATE agent_configs SET updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
                "version=(agent_configs.version + %(version_1)s::INTEGER), name=%(name)s::VARCHAR "
                "WHERE agent_configs.id = %(agent_configs_id)s::UUID RETURNING agent_configs.version",
                {"updated_at": tick(), "version_1": 1, "name": f"responder {n} v2", "agent_configs_id": agent})
        request(d, f"PUT /agent-configs/{n}", put_agent)

    agent = agents[3][0]

    def delete_agent(r):
        r.auth(MEMBER[T3])
        r.q("agent config by id", f"SELECT {cols('agent_configs')} FROM agent_configs "
            "WHERE agent_configs.id = %(pk_1)s::UUID", {"pk_1": agent})
        r.q("delete agent config", "DELETE FROM agent_configs WHERE agent_configs.id = %(id)s::UUID", {"id": agent})
    request(d, "DELETE /agent-configs/3", delete_agent)
    request(d, "GET /agent-configs (every one of the organization)", lambda r: (r.auth(ADMIN), r.q(
        "agent configs", "SELECT agent_configs.id AS agent_configs_id, agent_configs.name AS agent_configs_name, "
        "agent_configs.version AS agent_configs_version FROM agent_configs "
        "WHERE agent_configs.org_id = %(org_id_1)s::UUID ORDER BY agent_configs.name", {"org_id_1": ORG})),
        end="ROLLBACK")

    # Stats: team rows and organization-level rows (team_id NULL), values
    # exactly representable so that sums do not depend on their order.
    stats = []
    for i in range(12):
        team = None if i % 4 == 3 else TEAMS[(i + i // 4) % 4]
        st = uid(f"stat/{i}")
        stats.append(st)
        ts = tick()
        row = {"id": st, "created_at": ts, "updated_at": ts, "org_id": ORG,
               "metric_name": ["latency", "errors"][i % 2], "metric_type": "gauge", "value": 0.25 * (i + 1),
               "count": i, "timestamp": ts, "time_window": "1m", "labels": J({"i": i}), "unit": "ms",
               "team_id": team, "organization_id": ORG}

        def create_stat(r, row=row, team=team):
            r.auth(ADMIN)
            if team is not None:
                team_by_id(r, team)
            r.q("insert stat", insert("stats", row))
        request(d, f"POST /{'teams/t' + str(TEAMS.index(team)) if team else 'organizations/org'}/stats ({i})",
                create_stat)

    for n, team in enumerate(TEAMS):
        def team_stats(r, team=team):
            r.auth(MEMBER[team])
            r.q("stats page", f"SELECT {cols('stats')} FROM stats WHERE stats.team_id = %(team_id_1)s::UUID "
                "ORDER BY stats.timestamp DESC LIMIT %(param_1)s::INTEGER", {"team_id_1": team, "param_1": 3})
            r.q("team summary", "SELECT stats.metric_name, count(*) AS n, sum(stats.value) AS total, "
                "avg(stats.value) AS mean, min(stats.value) AS low, max(stats.value) AS high FROM stats "
                "WHERE stats.team_id = %(team_id_1)s::UUID GROUP BY stats.metric_name ORDER BY stats.metric_name",
                {"team_id_1": team})
        request(d, f"GET /teams/t{n}/stats", team_stats, end="ROLLBACK")

    def org_stats(r):
        r.auth(ADMIN)
        r.q("stats page", f"SELECT {cols('stats')} FROM stats WHERE stats.org_id = %(org_id_1)s::UUID "
            "ORDER BY stats.timestamp DESC LIMIT %(param_1)s::INTEGER OFFSET %(param_2)s::INTEGER",
            {"org_id_1": ORG, "param_1": 4, "param_2": 2})
        r.q("organization summary by metric", "SELECT stats.metric_name, count(*) AS n, sum(stats.value) AS total, "
            "avg(stats.value) AS mean, min(stats.value) AS low, max(stats.value) AS high, sum(stats.count) AS samples "
            "FROM stats WHERE stats.org_id = %(org_id_1)s::UUID GROUP BY stats.metric_name "
            "ORDER BY stats.metric_name", {"org_id_1": ORG})
        r.q("organization totals", "SELECT count(*) AS n, sum(stats.value) AS total, avg(stats.value) AS mean, "
            "max(stats.timestamp) AS latest FROM stats WHERE stats.org_id = %(org_id_1)s::UUID", {"org_id_1": ORG})
        r.q("organization-level rows", "SELECT count(*) AS count_1 FROM stats "
            "WHERE stats.org_id = %(org_id_1)s::UUID AND stats.team_id IS NULL", {"org_id_1": ORG})
    request(d, "GET /organizations/org/stats", org_stats, end="ROLLBACK")

    for i in (0, 3):
        st = stats[i]
        request(d, f"GET /stats/{i}", lambda r, st=st: (r.auth(ADMIN), r.q(
            "stat by id", f"SELECT {cols('stats')} FROM stats WHERE stats.id = %(pk_1)s::UUID", {"pk_1": st})),
            end="ROLLBACK")

    def delete_stat(r):
        r.auth(ADMIN)
        r.q("stat by id", f"SELECT {cols('stats')} FROM stats WHERE stats.id = %(pk_1)s::UUID", {"pk_1": stats[4]})
        r.q("delete stat", "DELETE FROM stats WHERE stats.id = %(id)s::UUID", {"id": stats[4]})
    request(d, "DELETE /stats/4", delete_stat)

    # DELETE /teams/{t3}/members/{u3}: membership check, admin count,
    # soft delete.
    def remove_member(r):
        r.auth(ADMIN)
        r.q("member of team", f"SELECT {cols('users')} FROM users WHERE users.id = %(id_1)s::UUID "
            "AND users.team_id = %(team_id_1)s::UUID LIMIT %(param_1)s::INTEGER",
            {"id_1": U3, "team_id_1": T3, "param_1": 1})
        r.q("admins left", "SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users "
            "WHERE users.team_id = %(team_id_1)s::UUID AND users.role = %(role_1)s AND users.is_active = true "
            "AND users.deleted_at IS NULL) AS anon_1", {"team_id_1": T3, "role_1": "ADMIN"})
        ts = tick()
        r.q("soft delete", "UPDATE users SET updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
            "deleted_at=%(deleted_at)s::TIMESTAMP WITH TIME ZONE, deleted_by=%(deleted_by)s::UUID, "
            "is_active=false WHERE users.id = %(users_id)s::UUID",
            {"updated_at": ts, "deleted_at": ts, "deleted_by": ADMIN, "users_id": U3})
    request(d, "DELETE /teams/t3/members/u3", remove_member)

    # PUT /organizations/{org}.
    def put_org(r):
        r.auth(ADMIN)
        org_by_id(r)
        r.q("update organization", "UPDATE organizations SET updated_at=%(updated_at)s::TIMESTAMP WITH TIME ZONE, "
            "description=%(description)s::VARCHAR WHERE organizations.id = %(organizations_id)s::UUID",
            {"updated_at": tick(), "description": "incident response", "organizations_id": ORG})
    request(d, "PUT /organizations/org", put_org)

    # GET /auth/me, the read-only request of every page load: ROLLBACK.
    for user in (ADMIN, U1, U2, U1, ADMIN, U2):
        request(d, "GET /auth/me", lambda r, user=user: r.auth(user), end="ROLLBACK")
    request(d, "GET /organizations/org/users (final)", list_users, end="ROLLBACK")


def main():
    if MODE == "psycopg3":
        d = Psycopg3(None)
    elif MODE == "psycopg3-prepare0":
        d = Psycopg3(0)
    elif MODE == "sqlalchemy":
        d = SQLAlchemy()
    else:
        sys.exit(f"unknown mode {MODE!r}")
    run(d)
    print(json.dumps({"mode": MODE, "prepared": d.prepared(), "transcript": transcript}, indent=1))


main()
