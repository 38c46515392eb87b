"""kvscope's Grafana dashboards as grafanalib code (see README, "Dashboards")."""
