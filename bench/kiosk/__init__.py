"""The kiosk benchmark: the seed's Locust load against ceiling, naive and Sluiceway servers."""
