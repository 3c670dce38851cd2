"""SOP Worker: turns written sales, collections and support procedures into automatic,
auditable Salesforce updates.

Data flows one way: source -> cache -> rules -> plan -> sink -> audit.
"""

__version__ = "0.1.0"
