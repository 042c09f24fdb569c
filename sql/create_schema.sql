-- hostkit ele-tools: the ElepHaaS admin schema that ele_report feeds.
--
-- One idempotent script: run it on an empty database, run it again, or run it over an
-- admin database that already has the ElepHaaS tables and the original ele_tools
-- functions, or over what the original script itself left (its tables without
-- ele_herd.base_name, its indexes and triggers, its functions without the view and the
-- SQL function it could not make); each time it ends in the same schema and fails
-- nothing. It only adds:
-- tables, columns and indexes are created if missing, never dropped; views and
-- functions (which hold no data) are replaced. Everything happens in one transaction,
-- so a failure leaves the database as it was.
--
--   psql -v ON_ERROR_STOP=1 -d admin -f /usr/share/ele-tools/create_schema.sql
--
-- Differences from the original ele_tools script, all of them fixes:
--   * the ElepHaaS tables are created here (the original relied on Django having made
--     them, and failed on an empty database: ele_herd had no base_name);
--   * host and herd names are compared lower-cased everywhere;
--   * the first check-in stores xlog_pos, later ones update local_pgdata;
--   * a version such as 16beta1 no longer makes the check-in fail;
--   * an instance may run on another port than its herd's (ele_instance.local_port,
--     e.g. a replica beside its primary on one host);
--   * v_dr_pairs reports the lag in MB (bytes / 1024 / 1024), as ElepHaaS shows it;
--   * an online instance that fully reports no master is a primary again (promotion).

BEGIN;

CREATE SCHEMA IF NOT EXISTS utility;

-- util_exec is the role reporters are made members of; it owns nothing. Roles belong
-- to the whole server: a run on another database at the same moment may make it
-- between the check and the CREATE (then this one waits for it and finds the key taken).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'util_exec') THEN
    BEGIN
      CREATE ROLE util_exec NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
END;
$$ LANGUAGE plpgsql;

--------------------------------------------------------------------------------
-- Tables (ElepHaaS's haas/models.py), created only where missing
--------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS utility.ele_environment (
  environment_id  SERIAL PRIMARY KEY,
  env_name        VARCHAR(40) NOT NULL,
  env_descr       TEXT NOT NULL DEFAULT '',
  created_dt      TIMESTAMPTZ NOT NULL DEFAULT now(),
  modified_dt     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS utility.ele_herd (
  herd_id         SERIAL PRIMARY KEY,
  environment_id  INT REFERENCES utility.ele_environment (environment_id)
                      ON DELETE SET NULL,
  base_name       VARCHAR(40) NOT NULL,
  herd_name       VARCHAR(40) NOT NULL,
  herd_descr      TEXT NOT NULL DEFAULT '',
  db_port         INT NOT NULL DEFAULT 5432,
  pgdata          VARCHAR(100) NOT NULL DEFAULT '',
  vhost           VARCHAR(40) NOT NULL DEFAULT '',
  created_dt      TIMESTAMPTZ NOT NULL DEFAULT now(),
  modified_dt     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A herd table made by the original script lacks base_name (its herd_name has no
-- length limit, so neither has the column added here).
ALTER TABLE utility.ele_herd ADD COLUMN IF NOT EXISTS base_name VARCHAR;
UPDATE utility.ele_herd SET base_name = lower(herd_name) WHERE base_name IS NULL;
ALTER TABLE utility.ele_herd ALTER COLUMN base_name SET NOT NULL;

CREATE TABLE IF NOT EXISTS utility.ele_server (
  server_id       SERIAL PRIMARY KEY,
  environment_id  INT REFERENCES utility.ele_environment (environment_id)
                      ON DELETE SET NULL,
  hostname        VARCHAR(40) NOT NULL,
  created_dt      TIMESTAMPTZ NOT NULL DEFAULT now(),
  modified_dt     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS utility.ele_instance (
  instance_id     SERIAL PRIMARY KEY,
  herd_id         INT NOT NULL REFERENCES utility.ele_herd (herd_id) ON DELETE CASCADE,
  server_id       INT NOT NULL REFERENCES utility.ele_server (server_id) ON DELETE CASCADE,
  version         VARCHAR(10) NOT NULL DEFAULT '',
  local_pgdata    VARCHAR(100) NOT NULL DEFAULT '',
  xlog_pos        BIGINT,
  is_online       BOOLEAN NOT NULL DEFAULT false,
  master_id       INT REFERENCES utility.ele_instance (instance_id) ON DELETE SET NULL,
  created_dt      TIMESTAMPTZ NOT NULL DEFAULT now(),
  modified_dt     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The port an instance listens on when it is not its herd's db_port.
ALTER TABLE utility.ele_instance ADD COLUMN IF NOT EXISTS local_port INT;

-- Django made the stamps NOT NULL without defaults; give them one so rows inserted by
-- the check-in never fail on them.
ALTER TABLE utility.ele_environment ALTER COLUMN created_dt SET DEFAULT now(),
                                    ALTER COLUMN modified_dt SET DEFAULT now();
ALTER TABLE utility.ele_herd ALTER COLUMN created_dt SET DEFAULT now(),
                             ALTER COLUMN modified_dt SET DEFAULT now();
ALTER TABLE utility.ele_server ALTER COLUMN created_dt SET DEFAULT now(),
                               ALTER COLUMN modified_dt SET DEFAULT now();
ALTER TABLE utility.ele_instance ALTER COLUMN created_dt SET DEFAULT now(),
                                 ALTER COLUMN modified_dt SET DEFAULT now();

-- The original's indexes, under its names (so a database it made keeps them and gets
-- no second copy), and the lookups the check-in makes on every report. None unique: a
-- legacy database may hold duplicates, and this script must not fail on them.
CREATE INDEX IF NOT EXISTS idx_server_environment_id ON utility.ele_server (environment_id);
CREATE INDEX IF NOT EXISTS idx_instance_server_id ON utility.ele_instance (server_id);
CREATE INDEX IF NOT EXISTS idx_instance_herd_id ON utility.ele_instance (herd_id);
CREATE INDEX IF NOT EXISTS idx_instance_master_id ON utility.ele_instance (master_id);
-- The names hostkit's first version of this script gave the same indexes.
DROP INDEX IF EXISTS utility.idx_ele_instance_herd;
DROP INDEX IF EXISTS utility.idx_ele_instance_server;
DROP INDEX IF EXISTS utility.idx_ele_instance_master;
CREATE INDEX IF NOT EXISTS idx_ele_server_hostname
    ON utility.ele_server (lower(hostname));
CREATE INDEX IF NOT EXISTS idx_ele_herd_base_name
    ON utility.ele_herd (lower(base_name), db_port, environment_id);

--------------------------------------------------------------------------------
-- Audit stamps
--------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION utility.sp_audit_stamps()
RETURNS TRIGGER
AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    NEW.created_dt = COALESCE(NEW.created_dt, now());
  ELSE
    NEW.created_dt = OLD.created_dt;
  END IF;
  NEW.modified_dt = now();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DO $$
DECLARE
  sTable TEXT;
BEGIN
  FOREACH sTable IN ARRAY ARRAY['ele_environment', 'ele_herd', 'ele_server',
                                'ele_instance']
  LOOP
    -- The original's trigger names: its triggers (on PUBLIC.sp_audit_stamps, which is
    -- left alone) are replaced, not doubled.
    EXECUTE format('DROP TRIGGER IF EXISTS t_%s_timestamp_b_iu ON utility.%I',
                   sTable, sTable);
    -- The name hostkit's first version of this script used.
    EXECUTE format('DROP TRIGGER IF EXISTS t_%s_audit ON utility.%I', sTable, sTable);
    EXECUTE format('CREATE TRIGGER t_%s_timestamp_b_iu BEFORE INSERT OR UPDATE '
                   'ON utility.%I FOR EACH ROW EXECUTE FUNCTION utility.sp_audit_stamps()',
                   sTable, sTable);
  END LOOP;
END;
$$ LANGUAGE plpgsql;

--------------------------------------------------------------------------------
-- Views (replaced: they hold no data, and the column lists may differ from an old one)
--------------------------------------------------------------------------------

DROP VIEW IF EXISTS utility.v_dr_pairs;
DROP VIEW IF EXISTS utility.v_flat_instance;

-- One row per instance with everything a check-in or the admin UI needs.
CREATE VIEW utility.v_flat_instance AS
SELECT i.instance_id,
       i.herd_id,
       i.server_id,
       e.environment_id,
       e.env_name,
       h.herd_name,
       h.base_name,
       COALESCE(i.local_port, h.db_port) AS db_port,
       s.hostname,
       h.vhost,
       i.version,
       COALESCE(NULLIF(i.local_pgdata, ''), h.pgdata) AS pgdata,
       i.xlog_pos,
       i.is_online,
       i.master_id,
       i.created_dt,
       i.modified_dt
  FROM utility.ele_instance i
  JOIN utility.ele_herd h USING (herd_id)
  JOIN utility.ele_server s USING (server_id)
  LEFT JOIN utility.ele_environment e ON (e.environment_id = h.environment_id);

-- Every replica beside its primary, with how far behind it is in MB.
CREATE VIEW utility.v_dr_pairs AS
SELECT r.instance_id,
       r.herd_id,
       r.server_id,
       round(abs(m.xlog_pos - r.xlog_pos) / 1024.0 / 1024.0, 2) AS mb_lag,
       r.master_id,
       h.vhost
  FROM utility.ele_instance r
  JOIN utility.ele_instance m ON (m.instance_id = r.master_id)
  JOIN utility.ele_herd h ON (h.herd_id = r.herd_id)
 WHERE r.is_online;

--------------------------------------------------------------------------------
-- Functions
--------------------------------------------------------------------------------

-- The numeric parts of a version ('15.4' -> {15,4}, '16beta1' -> {16}), for comparing
-- versions as numbers; NULL when there are none.
CREATE OR REPLACE FUNCTION utility.sp_version_parts(sVer VARCHAR)
RETURNS INT[]
AS $$
  SELECT CASE WHEN v ~ '^[0-9]+(\.[0-9]+)*$' THEN string_to_array(v, '.')::INT[] END
    FROM (SELECT substring(sVer FROM '^[0-9]+(?:\.[0-9]+)*') AS v) AS parts;
$$ LANGUAGE SQL IMMUTABLE;

/**
* The server_id of a host name, added (without an environment) when it is new.
* Someone must give a new server its environment in ElepHaaS before its instances are
* taken by sp_instance_checkin.
*/
CREATE OR REPLACE FUNCTION utility.sp_discover_server(sHost VARCHAR)
RETURNS INT
AS $$
DECLARE
  nServer INT;
BEGIN
  SELECT INTO nServer server_id
    FROM utility.ele_server
   WHERE lower(hostname) = lower(sHost)
   ORDER BY server_id
   LIMIT 1;

  IF NOT FOUND THEN
    INSERT INTO utility.ele_server (hostname)
    VALUES (lower(sHost))
    RETURNING server_id INTO nServer;
  END IF;

  RETURN nServer;
END;
$$ LANGUAGE plpgsql;

/** The herd_id for a herd's base name, port and environment. */
CREATE OR REPLACE FUNCTION utility.sp_get_herd(sName VARCHAR, nPort INT, nEnv INT)
RETURNS INT
AS $$
  SELECT herd_id
    FROM utility.ele_herd
   WHERE lower(base_name) = lower(sName)
     AND db_port = nPort
     AND environment_id = nEnv
   ORDER BY herd_id
   LIMIT 1;
$$ LANGUAGE SQL STABLE;

/**
* Register an instance, or record what changed about it.
*
* The signature and parameter names are the original's, so every reporter written
* against ele_tools keeps working; call it with named arguments. A NULL argument means
* "not reported" and keeps what is stored, with one exception: an online instance
* that reports its version and data directory but no master host is a primary (it was
* promoted, or always was).
* sMasterHost may be 'host' (its master listens on the same port) or 'host:port'.
*
* A new instance is taken only when its server has an environment and a herd of that
* environment matches (or its master is known); otherwise nothing is stored, and the
* reporter sees the instance missing from v_flat_instance.
*/
CREATE OR REPLACE FUNCTION utility.sp_instance_checkin(
  sHerd VARCHAR,
  sHost VARCHAR,
  nPort INT,
  sVer VARCHAR DEFAULT NULL,
  bOnline BOOLEAN DEFAULT NULL,
  sDataDir VARCHAR DEFAULT NULL,
  sMasterHost VARCHAR DEFAULT NULL,
  nXlog BIGINT DEFAULT NULL
)
RETURNS VOID
AS $$
DECLARE
  rInst        RECORD;
  nHerd        INT;
  sHerdData    VARCHAR;
  nHerdPort    INT;
  nLead        INT;
  nSrv         INT;
  sMaster      VARCHAR;
  nMasterPort  INT;
  sLocalData   VARCHAR;
  sNewVer      VARCHAR;
BEGIN
  IF sMasterHost IS NOT NULL AND sMasterHost <> '' THEN
    IF sMasterHost ~ ':[0-9]+$' THEN
      sMaster = substring(sMasterHost FROM '^(.*):[0-9]+$');
      nMasterPort = substring(sMasterHost FROM ':([0-9]+)$')::INT;
    ELSE
      sMaster = sMasterHost;
      nMasterPort = nPort;
    END IF;

    SELECT INTO nLead instance_id
      FROM utility.v_flat_instance
     WHERE lower(hostname) = lower(sMaster)
       AND lower(base_name) = lower(sHerd)
       AND db_port = nMasterPort
     ORDER BY instance_id
     LIMIT 1;
  END IF;

  SELECT INTO rInst f.*
    FROM utility.v_flat_instance f
   WHERE lower(f.hostname) = lower(sHost)
     AND lower(f.base_name) = lower(sHerd)
     AND f.db_port = nPort
   ORDER BY f.instance_id
   LIMIT 1;

  IF rInst.instance_id IS NULL THEN
    nSrv = utility.sp_discover_server(sHost);

    IF nLead IS NULL THEN
      SELECT INTO nHerd, sHerdData, nHerdPort h.herd_id, h.pgdata, h.db_port
        FROM utility.ele_herd h
        JOIN utility.ele_server s ON (s.environment_id = h.environment_id)
       WHERE s.server_id = nSrv
         AND lower(h.base_name) = lower(sHerd)
         AND h.db_port = nPort
       ORDER BY h.herd_id
       LIMIT 1;
    ELSE
      SELECT INTO nHerd, sHerdData, nHerdPort h.herd_id, h.pgdata, h.db_port
        FROM utility.ele_instance i
        JOIN utility.ele_herd h USING (herd_id)
       WHERE i.instance_id = nLead;
    END IF;

    IF nHerd IS NULL THEN
      RETURN;
    END IF;

    INSERT INTO utility.ele_instance (
        herd_id, server_id, version, local_pgdata, local_port, xlog_pos, is_online,
        master_id
    ) VALUES (
        nHerd, nSrv, COALESCE(sVer, ''),
        CASE WHEN sDataDir IS NULL OR sDataDir = sHerdData THEN '' ELSE sDataDir END,
        CASE WHEN nPort = nHerdPort THEN NULL ELSE nPort END,
        nXlog, COALESCE(bOnline, false), nLead
    );
    RETURN;
  END IF;

  -- A full report (online, version and data directory given) without a master host
  -- comes from a primary; a partial one (say, only the WAL position) keeps the master.
  IF bOnline IS TRUE AND sVer IS NOT NULL AND sDataDir IS NOT NULL
     AND (sMasterHost IS NULL OR sMasterHost = '') THEN
    nLead = NULL;
  ELSE
    nLead = COALESCE(nLead, rInst.master_id);
  END IF;

  -- The version may be partial while the server is down; keep the greatest seen.
  sNewVer = COALESCE(rInst.version, '');
  IF sVer IS NOT NULL AND (utility.sp_version_parts(sNewVer) IS NULL
       OR utility.sp_version_parts(sVer) > utility.sp_version_parts(sNewVer)) THEN
    sNewVer = sVer;
  END IF;

  SELECT INTO sHerdData pgdata FROM utility.ele_herd WHERE herd_id = rInst.herd_id;
  sLocalData = CASE WHEN sDataDir IS NULL THEN NULL
                    WHEN sDataDir = sHerdData THEN ''
                    ELSE sDataDir END;

  IF (COALESCE(bOnline, rInst.is_online), nLead, sNewVer,
      COALESCE(sDataDir, rInst.pgdata), COALESCE(nXlog, rInst.xlog_pos))
       IS DISTINCT FROM
     (rInst.is_online, rInst.master_id, rInst.version, rInst.pgdata, rInst.xlog_pos)
  THEN
    UPDATE utility.ele_instance
       SET is_online = COALESCE(bOnline, is_online),
           master_id = nLead,
           version = sNewVer,
           local_pgdata = COALESCE(sLocalData, local_pgdata),
           xlog_pos = COALESCE(nXlog, xlog_pos)
     WHERE instance_id = rInst.instance_id;
  END IF;
END;
$$ LANGUAGE plpgsql;

--------------------------------------------------------------------------------
-- Privileges: a member of util_exec reports without being a superuser
--------------------------------------------------------------------------------

GRANT USAGE ON SCHEMA utility TO util_exec;
GRANT ALL ON ALL TABLES IN SCHEMA utility TO util_exec;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA utility TO util_exec;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA utility TO util_exec;

-- Objects the owner of this schema adds later get the same grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA utility GRANT ALL ON TABLES TO util_exec;
ALTER DEFAULT PRIVILEGES IN SCHEMA utility
  GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO util_exec;
ALTER DEFAULT PRIVILEGES IN SCHEMA utility GRANT EXECUTE ON FUNCTIONS TO util_exec;

COMMIT;
