-- Governance: an index of approval requests (derived from the approval events of each
-- run's journal) and of completed tool calls (for policies that count a principal's calls).
CREATE TABLE approvals (
    approval_id TEXT COLLATE "C" PRIMARY KEY,
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES runs (run_id),
    step_id     INTEGER NOT NULL,
    tenant      TEXT,
    requester   TEXT,
    title       TEXT NOT NULL,
    tool        TEXT,
    request     TEXT NOT NULL,
    approvers   TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL,
    escalated   INTEGER NOT NULL DEFAULT 0,
    decided_by  TEXT,
    decided_at  DOUBLE PRECISION,
    reason      TEXT,
    consumed_at DOUBLE PRECISION
);

CREATE INDEX approvals_by_status ON approvals (status, tenant);
CREATE INDEX approvals_by_run ON approvals (run_id);

CREATE TABLE tool_usage (
    run_id    TEXT COLLATE "C" NOT NULL REFERENCES runs (run_id),
    step_id   INTEGER NOT NULL,
    tenant    TEXT,
    principal TEXT,
    tool      TEXT NOT NULL,
    cost      DOUBLE PRECISION NOT NULL,
    at        DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, step_id)
);

CREATE INDEX tool_usage_by_principal ON tool_usage (tenant, principal, tool, at);
