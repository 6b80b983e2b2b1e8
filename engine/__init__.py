"""Approvals engine: deploys, runs and persists joint-approval BPMN flows on SpiffWorkflow."""
