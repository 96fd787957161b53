"""TFDS builder package `aia_flares`: SDO/AIA FITS + GOES XRS labels (+ HEK events) -> TFRecords.

Modules, in the order data flows through them:
  fits_io     read and validate AIA level-1 FITS files (compressed or plain)
  preprocess  DN -> DN/s, degradation, block-sum downsampling, clip and stretch to [-1, 1], inverses
  goes        GOES XRS 1-8 A fluxes, scaling policy, flux -> flare class, image and forecast labels
  hek         HEK flare events (online query or a saved list) -> flaring times
  splits      time splits with a gap at each boundary
  frames      the units of work of the build: one file's header, one preprocessed frame
  cache       the build cache: headers and preprocessed planes keyed by file checksum and settings
  synthetic_sun  the synthetic Sun: disc, corona, active regions, coronal holes, flares (DN/s)
  synthetic   an AIA-like FITS archive of that Sun with a consistent GOES XRS file
  fetch       Fido download of AIA and GOES files into a manual_dir layout (online)
  manual_files    the AIA and GOES files under manual_dir
  build_settings  the settings of a build, their defaults and fingerprint
  manifest        skipped.json (files left out, and why) and build_settings.json
  example         the dataset's features and the example of one labelled frame
  beam_build      the frames of a build preprocessed on Apache Beam
  builder     the TFDS builder, running the modules above (imports tensorflow_datasets; import it
              explicitly)
"""

FLARE_CLASSES = ("A", "B", "C", "M", "X")  # Index i is label i.
