"""The jobs of :class:`~worker.salesforce.sink.SalesforceSink`, one module each: shared
state (:mod:`.state`), preparation and guards (:mod:`.prepare`), collections in composites
(:mod:`.collections`), emails (:mod:`.emails`), lead conversion (:mod:`.conversion`),
lookups (:mod:`.lookups`), the order of one write (:mod:`.apply`) and reconcile
(:mod:`.reconcile`)."""
